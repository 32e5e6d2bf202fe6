"""pfd_ase.analysis."""
