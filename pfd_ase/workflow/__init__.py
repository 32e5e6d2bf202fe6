"""pfd_ase.workflow."""
