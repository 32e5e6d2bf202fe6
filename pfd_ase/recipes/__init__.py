"""pfd_ase.recipes."""
