"""The PFD workflow: configuration, named steps, run-directory state, the two loops.

- :mod:`~pfd_ase.workflow.config`: the schema, its defaults and the typed settings
  (:class:`StageConfig`, :class:`DistillConfig`, :class:`InitConfig`, :class:`TrainConfig`);
- :mod:`~pfd_ase.workflow.steps`: the named steps (perturb, explore, filter, select,
  label, evaluate, train);
- :mod:`~pfd_ase.workflow.state`: step records keyed by their inputs, the summary;
- :mod:`~pfd_ase.workflow.loops`: the fine-tune and distillation loops, :func:`run`.
"""

from pfd_ase.workflow import steps
from pfd_ase.workflow.config import (
    ConfigError,
    DistillConfig,
    InitConfig,
    StageConfig,
    TrainConfig,
    default_config_text,
    load_config,
    validate,
)
from pfd_ase.workflow.loops import distill_loop, finetune_loop, run
from pfd_ase.workflow.state import RunState, run_status

__all__ = [
    "ConfigError",
    "DistillConfig",
    "InitConfig",
    "RunState",
    "StageConfig",
    "TrainConfig",
    "default_config_text",
    "distill_loop",
    "finetune_loop",
    "load_config",
    "run",
    "run_status",
    "steps",
    "validate",
]
