"""pfd_ase: PFD machine-learning force fields as an ASE plugin suite."""

__version__ = "0.1.0.dev0"
