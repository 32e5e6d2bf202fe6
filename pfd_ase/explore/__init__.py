"""Exploration: ASE molecular-dynamics walkers over temperature × pressure × structure grids.

:func:`explore` (or :meth:`ExploreTask.run`) starts one *walker* per combination of
starting structure, temperature and pressure and runs them through a
``concurrent.futures.Executor`` (in-process and serial when none is given). Walker
``i`` enumerates the grid structure-major: ``for structure: for T: for P``. A
pressure of ``None`` means NVT with the chosen ``thermostat`` (Langevin, Bussi,
Nosé–Hoover chain), or NVE (Velocity Verlet) with ``thermostat="nve"``; a number
means NPT with the chosen ``barostat`` (ASE's isotropic MTK barostat with a
Nosé–Hoover chain thermostat, or Berendsen).

Walker ``i`` works in ``workdir/walker.{i:04d}``:

``walker.json``
    the task record: the walker's key, conditions and definition, written when it
    starts;
``traj.extxyz``
    the sampled frames, appended (full precision) as the MD runs;
``rejected.extxyz``
    sampled frames rejected by the filters, and the state at which MD blew up;
``md.log``
    ASE's MD log, one line per sampled step;
``done.json``
    the done record, written atomically when the walker ends (its key and record,
    status ``"finished"`` or ``"exploded"``);
``failure.json``
    exception, traceback, attempts and cause when the MD raised for a reason other
    than a blow-up.

A walker's key (:func:`pfd_ase.tasks.task_key`) hashes its starting structure, its
conditions, every setting that changes its MD and the model. A rerun with the same
settings skips every walker with a done record (a walker that crashed or failed starts
again from step 0; MD is cheap next to the DFT that follows). Existing records follow
the rule of :mod:`pfd_ase.tasks`: a done record under another key (other settings)
stops the run before any MD (``ValueError``: use a fresh workdir); one that cannot be
read or is incomplete is moved aside to ``done.json.stale`` with a warning and the
walker runs again. Velocities come from ``np.random.default_rng(SeedSequence(seed,
spawn_key=(i,)))``: one seed gives every walker its own reproducible stream,
independent of the executor and of the global NumPy seed.

Frames are sampled every ``sample_every`` steps: ``steps // sample_every`` frames
per walker that runs to the end, plus the starting structure (step 0) when
``include_initial``. They are unlabelled structures; ``atoms.info`` holds

``pfd_walker``, ``pfd_structure_index``, ``pfd_step``, ``pfd_time_fs``
    where the frame comes from;
``pfd_temperature_K``, ``pfd_pressure_GPa`` (NPT only), ``pfd_ensemble``
    the walker's conditions;
``pfd_md_temperature_K``
    the instantaneous kinetic temperature;
``pfd_model_energy``, ``pfd_model_stress`` (and ``atoms.arrays["pfd_model_forces"]``)
    the MD model's predictions, when its calculator computed them anyway;
``pfd_max_force_devi``, ``pfd_energy_devi`` (and ``atoms.arrays["pfd_force_devi"]``)
    the committee deviations of a committee :class:`~pfd_ase.calculators.PFDCalculator`;
``pfd_max_dH`` (and ``atoms.arrays["pfd_dH"]``), ``pfd_dH_exceeded``
    the dH (nats) against a training set's descriptor bank, of a
    :class:`~pfd_ase.calculators.DHMonitor` model or of the run's :class:`DHWatch`
    (``explore(..., dh_watch=DHWatch(bank, max_dH=2.0, action="stop"))``), and whether it
    exceeds the watch's threshold; ``action="stop"`` stops the walker there instead
    (status ``"stopped"``, that state kept as a marked frame).

Blow-ups are detected with :mod:`pfd_ase.selectors.filters`: non-finite
positions, energy or forces and cell limits at every step, too-close atoms every
``check_every`` steps and on every sampled frame. A blown-up walker stops, records
status ``"exploded"`` with the step and reason, and the others go on. Frames that
fail only the optional ``max_force_eV_A`` limit are rejected but the walker goes on.
Units: K, fs, GPa at the interface; eV, Å and ASE time inside.

Modules, each importing only those after it: :mod:`.driver` (:class:`ExploreTask`,
:func:`explore`: running the walkers, skipping finished ones, gathering frames),
:mod:`.walker` (one walker's MD), :mod:`.settings` (the validated fields of
:class:`ExploreTask`), :mod:`.results` (walker directories, file names,
:class:`ExploreResult`). Task directories, keys, records, the model spec and the
executor loop come from :mod:`pfd_ase.tasks`.
"""

from pfd_ase.explore.driver import ExploreTask, explore
from pfd_ase.explore.results import ExploreResult, walker_dir
from pfd_ase.explore.settings import BAROSTATS, DH_ACTIONS, THERMOSTATS, DHWatch

__all__ = [
    "BAROSTATS",
    "DH_ACTIONS",
    "DHWatch",
    "THERMOSTATS",
    "ExploreResult",
    "ExploreTask",
    "explore",
    "walker_dir",
]
