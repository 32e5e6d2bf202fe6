"""pfd_ase.training."""
