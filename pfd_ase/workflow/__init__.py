"""The PFD workflow: configuration, run-directory state, fine-tune and distillation loops."""

from pfd_ase.workflow.config import ConfigError, load_config, validate
from pfd_ase.workflow.loops import distill_loop, finetune_loop, run
from pfd_ase.workflow.state import RunState, run_status

__all__ = [
    "ConfigError",
    "RunState",
    "distill_loop",
    "finetune_loop",
    "load_config",
    "run",
    "run_status",
    "validate",
]
