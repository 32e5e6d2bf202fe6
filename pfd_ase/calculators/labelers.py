"""Labelers: the reference calculators that produce training labels.

:func:`make_labeler` turns a name into a configured ASE calculator:

========  =====================================================================
name      calculator
========  =====================================================================
vasp      ``ase.calculators.vasp.Vasp`` with the PFD supplement's settings
          (:data:`VASP_DEFAULTS`); production DFT.
gpaw      GPAW, PBE plane waves, small settings for demos (:data:`GPAW_DEFAULTS`).
gpaw-lcao GPAW in LCAO mode, PBE, dzp basis, Γ point (:data:`GPAW_LCAO_DEFAULTS`): large
          cells (oxides of 36-144 atoms) on a few cores; energies and forces, no stress.
xtb       GFN1-xTB of the ``tblite`` package (:data:`XTB_DEFAULTS`): a fast
          semi-empirical labeler for tests and quick runs; energies, forces, stress.
emt       ``ase.calculators.emt.EMT`` (tests).
tersoff   matscipy Tersoff, Si/C parameters of PRB 39, 5566 (tests).
sw        matscipy Stillinger-Weber, Si parameters of PRB 31, 5262 (tests).
chgnet    the pre-trained CHGNet shipped with its wheel (offline teacher).
========  =====================================================================

Any calculator object is accepted as is. Units inside: eV, Å, eV/Å, eV/Å³.

Provenance
----------
:func:`labeler_info` records which labeler produced a frame the way ASE itself does (as
``ase.db`` stores ``calc.name`` and the calculator's parameters): the name is the
calculator's ``name`` and the settings are its ``parameters``, which hold only real
settings of the calculator (``Vasp`` writes every key of its parameters to the INCAR,
GPAW refuses unknown keys). Where ASE's name differs from the labeler's name, the
labeler's name is set as ``calc.name`` (matscipy's ``Manybody``) or derived from the
class (``CHGNetCalculator``). Two derived entries join the settings: ``version`` (the
package that provides the calculator, e.g. ``"gpaw 26.7.0"``) and, for a calculator that
exposes a model's content identity as ``identity`` (:class:`~pfd_ase.calculators.PFDCalculator`,
the ``chgnet`` labeler), that identity.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "GPAW_DEFAULTS",
    "GPAW_LCAO_DEFAULTS",
    "KNOWN_LABELERS",
    "VASP_DEFAULTS",
    "XTB_DEFAULTS",
    "LabelerSetupError",
    "check_labeler",
    "check_labeler_settings",
    "check_vasp_setup",
    "is_calculator",
    "labeler_info",
    "make_labeler",
    "molecule_labeler",
]

#: VASP settings of the PFD supplement: PBE, 500 eV, k-spacing 0.2 Å⁻¹ without Γ,
#: EDIFF 1e-5 eV, Gaussian smearing of 0.05 eV. No CHGCAR (ASE already skips the
#: WAVECAR): a single point needs neither, and thousands of frames are labelled.
VASP_DEFAULTS: dict[str, Any] = {
    "xc": "PBE",
    "encut": 500,
    "kspacing": 0.2,
    "kgamma": False,
    "ediff": 1e-5,
    "ismear": 0,
    "sigma": 0.05,
    "lcharg": False,
}

#: GPAW settings for demos and tests on small cells: PBE plane waves at 350 eV,
#: a Monkhorst-Pack mesh of 2 points per Å⁻¹ without Γ (about k-spacing 0.5 Å⁻¹),
#: Gaussian smearing of 0.05 eV (as VASP ISMEAR = 0), log written to ``txt`` in
#: the calculation directory (none without one, unless ``txt`` is given). SCF to GPAW's
#: own density criterion (1e-4) and 1e-5 eV per valence electron: on six rattled Si frames
#: (8-15 atoms, every bonding type, k density 3.5) within 1.1e-3 eV/Å, 1e-8 eV/atom and
#: 2e-3 GPa of 1e-5 / 1e-6, 8 % faster (2026-12-06, 1 core each).
GPAW_DEFAULTS: dict[str, Any] = {
    "mode": {"name": "pw", "ecut": 350.0},
    "xc": "PBE",
    "kpts": {"density": 2.0, "gamma": False},
    "occupations": {"name": "methfessel-paxton", "order": 0, "width": 0.05},
    "convergence": {"energy": 1e-5, "density": 1e-4},
    "txt": "gpaw.txt",
}

#: GPAW in LCAO mode for large cells: PBE, the double-zeta polarised basis, the Γ point only
#: (a 36-144-atom oxide cell is 8-10 Å or more along each axis), Fermi-Dirac smearing of
#: 0.05 eV. GPAW computes no stress in LCAO mode: frames get energies and forces.
GPAW_LCAO_DEFAULTS: dict[str, Any] = {
    "mode": "lcao",
    "basis": "dzp",
    "xc": "PBE",
    "kpts": {"size": (1, 1, 1), "gamma": True},
    "occupations": {"name": "fermi-dirac", "width": 0.05},
    "convergence": {"energy": 1e-6, "density": 1e-5},
    "txt": "gpaw.txt",
}

#: tblite's GFN1-xTB (Grimme's semi-empirical tight binding, parametrised up to Rn), with
#: the electronic temperature and accuracy of tblite's defaults; quiet.
XTB_DEFAULTS: dict[str, Any] = {"method": "GFN1-xTB", "verbosity": 0}

_VASP_COMMAND_ENV = ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT")
_CHGNET_DEFAULT_MODEL = "0.3.0"


class LabelerSetupError(RuntimeError):
    """A labeler cannot run here: missing program, POTCARs or Python package."""


# --------------------------------------------------------------------------- factory


def make_labeler(name: Any, directory: str | os.PathLike | None = None, **overrides: Any) -> Any:
    """Return a configured ASE calculator for labelling.

    Parameters
    ----------
    name
        One of :data:`KNOWN_LABELERS`, or a calculator object (returned as is).
    directory
        Working directory of file-based calculators (VASP inputs and outputs,
        the GPAW log); created when needed.
    **overrides
        Top-level settings replacing the defaults: any ``Vasp`` keyword and
        ``command`` for ``vasp`` (``encut=600``, ``command="mpirun vasp_std"``);
        any ``GPAW`` keyword for ``gpaw`` (``mode={"name": "pw", "ecut": 400}``);
        ``parameters`` (a matscipy parameter dict or its name) for ``tersoff``
        and ``sw``; ``model`` (a pre-trained version or a file), ``use_device``
        and ``CHGNetCalculator`` keywords for ``chgnet``; ``EMT`` keywords for ``emt``.
        Two settings of any DFT labeler (vasp, gpaw, gpaw-lcao) belong to ``pfd_ase``:
        ``dispersion`` (``"d3bj"`` or ``"d3zero"``: Grimme's D3 on top, VASP's ``IVDW``
        tag, the ``dftd3`` package's calculator summed with GPAW,
        :class:`~pfd_ase.calculators.corrections.DispersionCorrected`) and ``vacuum_A``
        (non-periodic frames are labelled in a box this much wider than the molecule on
        each side, :class:`~pfd_ase.calculators.corrections.InVacuum`; any labeler).

    Raises
    ------
    ValueError
        Unknown name.
    LabelerSetupError
        The program, its data or the Python package is missing.
    """
    if not isinstance(name, str):
        if is_calculator(name):
            if overrides or directory is not None:
                raise TypeError("directory and overrides apply to labeler names, not objects")
            return name
        raise TypeError(f"a labeler is a name or a calculator object, not {type(name).__name__}")
    key = _canonical_name(name)
    overrides = dict(overrides)
    dispersion = overrides.pop("dispersion", None)
    vacuum = overrides.pop("vacuum_A", None)
    _check_corrections(key, dispersion, vacuum)
    if dispersion is not None and key == "vasp":
        from pfd_ase.calculators.corrections import DISPERSION_DAMPINGS

        overrides.setdefault("ivdw", DISPERSION_DAMPINGS[dispersion]["ivdw"])
    calc = _BUILDERS[key](directory, overrides)
    if dispersion is not None and key != "vasp":
        from pfd_ase.calculators.corrections import DispersionCorrected

        functional = str({**GPAW_DEFAULTS, **overrides}.get("xc", "PBE"))
        calc = DispersionCorrected(calc, dispersion, functional, labeler_info(calc))
    if vacuum is not None:
        from pfd_ase.calculators.corrections import InVacuum

        calc = InVacuum(calc, float(vacuum), labeler_info(calc))
    return calc


#: Labelers that take the ``dispersion`` setting (DFT) and that need ``vacuum_A`` for molecules.
_DFT_LABELERS = ("vasp", "gpaw", "gpaw-lcao")


def _check_corrections(key: str, dispersion: Any, vacuum: Any) -> None:
    """Refuse a dispersion correction where it does not belong, and bad values."""
    if dispersion is not None:
        from pfd_ase.calculators.corrections import DISPERSION_DAMPINGS

        if key == "xtb":
            raise ValueError(
                "GFN-xTB includes its own dispersion (D3 in GFN1-xTB, D4 in GFN2-xTB): "
                "drop the dispersion setting for the xtb labeler"
            )
        if key not in _DFT_LABELERS:
            raise ValueError(
                f"dispersion corrects a DFT labeler ({', '.join(_DFT_LABELERS)}), not {key}"
            )
        if dispersion not in DISPERSION_DAMPINGS:
            raise ValueError(
                f"unknown dispersion {dispersion!r}; known: {sorted(DISPERSION_DAMPINGS)}"
            )
    if vacuum is not None:
        try:
            ok = float(vacuum) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"vacuum_A must be a positive length in Å, got {vacuum!r}")


def molecule_labeler(
    name: str, directory: str | os.PathLike | None = None, multiplicity: int = 1, **overrides: Any
) -> Any:
    """A labeler (:func:`make_labeler`) set up for an isolated molecule in a periodic box.

    The k-point mesh becomes the Γ point and, with ``multiplicity`` > 1 (3: triplet O₂),
    spin polarisation is switched on: GPAW ``spinpol``, VASP ``ISPIN = 2``, xTB its
    ``multiplicity`` (the initial moments come from the atoms' initial magnetic moments,
    see :func:`pfd_ase.analysis.phases.molecule_chemical_potential`). Classical labelers and
    models take the molecule as it is. ``overrides`` (the run's labeler settings) lose to
    these.
    """
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be at least 1, got {multiplicity}")
    key = _canonical_name(name) if isinstance(name, str) else None
    spin = multiplicity > 1
    settings = dict(overrides)
    if key in ("gpaw", "gpaw-lcao"):
        settings |= {"kpts": {"size": (1, 1, 1), "gamma": True}, "spinpol": spin}
    elif key == "vasp":
        settings |= {"kpts": (1, 1, 1), "ispin": 2 if spin else 1}
        settings["kspacing"] = None  # the Γ point, not the solid's mesh
    elif key == "xtb":
        settings |= {"multiplicity": int(multiplicity)}
    return make_labeler(name, directory=directory, **settings)


def _canonical_name(name: str) -> str:
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown labeler {name!r}; known labelers: {', '.join(KNOWN_LABELERS)}")
    return key


def is_calculator(obj: Any) -> bool:
    """Whether ``obj`` behaves as an ASE calculator (energy and forces)."""
    return callable(getattr(obj, "get_potential_energy", None)) and callable(
        getattr(obj, "get_forces", None)
    )


# --------------------------------------------------------------------------- VASP


def _make_vasp(directory: str | os.PathLike | None, overrides: dict[str, Any]) -> Any:
    from ase.calculators.vasp import Vasp

    params = {**VASP_DEFAULTS, **overrides}
    command = params.pop("command", None)
    _vasp_command(command)
    _vasp_pp_root()
    kwargs: dict[str, Any] = {}
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        kwargs["directory"] = str(directory)
    # the command stays unresolved so that Vasp reads the environment where it runs
    return Vasp(command=command, **kwargs, **params)


def _cfg_get(key: str) -> str | None:
    """A setting from ASE's config file or the environment, as ASE itself reads it."""
    try:
        from ase.config import cfg
    except ImportError:  # older ASE
        return os.environ.get(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return cfg[key]
        except KeyError:
            return None


def _vasp_command(command: str | None = None) -> str:
    if command:
        return command
    for env in _VASP_COMMAND_ENV:
        value = _cfg_get(env)
        if value:
            return value
    raise LabelerSetupError(
        "no VASP command: pass command='mpirun vasp_std' (or similar) to the vasp labeler or "
        f"set one of the environment variables {', '.join(_VASP_COMMAND_ENV)}"
    )


def _vasp_pp_root() -> Path:
    value = _cfg_get("VASP_PP_PATH")
    if not value:
        raise LabelerSetupError(
            "VASP_PP_PATH is not set: point it to the folder holding potpaw_PBE/<element>/POTCAR"
        )
    root = Path(value).expanduser()
    if not root.is_dir():
        raise LabelerSetupError(f"VASP_PP_PATH={value} is not a directory")
    return root


def check_vasp_setup(
    symbols: Iterable[str], *, command: str | None = None, **vasp_params: Any
) -> dict[str, str]:
    """Check that VASP can run for these elements, before any work is done.

    Parameters
    ----------
    symbols
        Chemical symbols (repeats allowed), e.g. all symbols of all frames.
    command
        The VASP command, if not taken from ``ASE_VASP_COMMAND``, ``VASP_COMMAND``
        or ``VASP_SCRIPT``.
    **vasp_params
        Overrides of :data:`VASP_DEFAULTS` that choose POTCARs (``xc``, ``pp``,
        ``setups``, ``pp_version``).

    Returns
    -------
    dict
        Element → POTCAR path, as ASE will use it.

    Raises
    ------
    LabelerSetupError
        No command, no ``VASP_PP_PATH``, or POTCARs missing (all missing elements listed).
    """
    from ase import Atoms
    from ase.calculators.vasp import Vasp

    _vasp_command(command)
    root = _vasp_pp_root()
    params = {**VASP_DEFAULTS, **vasp_params}
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    for symbol in sorted(set(symbols)):
        calc = Vasp(**params)
        try:
            calc.initialize(Atoms(symbol))  # resolves POTCARs exactly as a run would
        except Exception as exc:  # ASE raises a bare RuntimeError here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            missing[symbol] = first
        else:
            found[symbol] = str(calc.ppp_list[0])
    if missing:
        detail = "; ".join(f"{s}: {msg}" for s, msg in missing.items())
        raise LabelerSetupError(
            f"no POTCAR for {', '.join(missing)} under VASP_PP_PATH={root} ({detail})"
        )
    return found


# --------------------------------------------------------------------------- GPAW


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LabelerSetupError(
            f"the {extra} labeler needs {module!r}: pip install pfd_ase[{extra}] ({exc})"
        ) from exc


def _make_gpaw(
    directory: str | os.PathLike | None,
    overrides: dict[str, Any],
    defaults: Mapping[str, Any] = GPAW_DEFAULTS,
) -> Any:
    gpaw = _require("gpaw", "gpaw")
    params = {**defaults, **overrides}
    txt = params.pop("txt")
    if directory is None and "txt" not in overrides:
        txt = None  # no calculation folder: no default log left in the current directory
    if txt is not None and txt != "-" and not hasattr(txt, "write"):
        txt = Path(txt)
        if directory is not None and not txt.is_absolute():
            txt = Path(directory) / txt
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt = str(txt)
    return gpaw.GPAW(txt=txt, **params)  # its name is "gpaw", its parameters the settings


def _make_gpaw_lcao(directory: str | os.PathLike | None, overrides: dict[str, Any]) -> Any:
    mode = {**GPAW_LCAO_DEFAULTS, **overrides}["mode"]
    name = mode.get("name") if isinstance(mode, Mapping) else mode
    if name != "lcao":
        raise ValueError(f"gpaw-lcao is GPAW's LCAO mode, not mode {mode!r} (use gpaw)")
    calc = _make_gpaw(directory, overrides, GPAW_LCAO_DEFAULTS)
    # GPAW has no LCAO stress (AttributeError): this instance does not offer it
    calc.implemented_properties = [p for p in calc.implemented_properties if p != "stress"]
    return calc


def _make_xtb(directory: str | os.PathLike | None, overrides: dict[str, Any]) -> Any:
    tblite_ase = _require("tblite.ase", "xtb")
    calc = tblite_ase.TBLite(**{**XTB_DEFAULTS, **overrides})  # named "xtb" by labeler_info
    if directory is not None:
        calc.directory = str(directory)
    return calc


# --------------------------------------------------------------------------- classical


def _make_emt(directory: str | os.PathLike | None, overrides: dict[str, Any]) -> Any:
    from ase.calculators.emt import EMT

    calc = EMT(**overrides)  # its name is "emt", its parameters the settings
    if directory is not None:
        calc.directory = str(directory)
    return calc


def _manybody(name: str, kind: str, default: str, directory: Any, overrides: dict[str, Any]) -> Any:
    """A matscipy ``Manybody`` calculator named ``name``, its parameter table recorded as its
    ``parameters["parameters"]`` (``Manybody`` itself keeps nothing there)."""
    _require("matscipy", "classical")
    from matscipy.calculators.manybody import Manybody

    module = importlib.import_module(f"matscipy.calculators.manybody.explicit_forms.{kind}")
    unknown = set(overrides) - {"parameters"}
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; this labeler takes 'parameters'")
    parameters = overrides.get("parameters", default)
    if isinstance(parameters, str):
        parameters = getattr(module, parameters)
    form = {"tersoff_brenner": "TersoffBrenner", "stillinger_weber": "StillingerWeber"}[kind]
    calc = Manybody(**getattr(module, form)(parameters))
    calc.name = name  # a plain class attribute of Manybody ("Manybody"), as ase.db records it
    calc.parameters["parameters"] = dict(parameters)
    if directory is not None:
        calc.directory = str(directory)
    return calc


def _make_tersoff(directory: Any, overrides: dict[str, Any]) -> Any:
    return _manybody("tersoff", "tersoff_brenner", "Tersoff_PRB_39_5566_Si_C", directory, overrides)


def _make_sw(directory: Any, overrides: dict[str, Any]) -> Any:
    return _manybody(
        "sw", "stillinger_weber", "Stillinger_Weber_PRB_31_5262_Si", directory, overrides
    )


# --------------------------------------------------------------------------- CHGNet


def _make_chgnet(directory: Any, overrides: dict[str, Any]) -> Any:
    _require("chgnet", "chgnet")
    from ase import units
    from chgnet.model.dynamics import CHGNetCalculator

    from pfd_ase.calculators.chgnet import load_chgnet_model
    from pfd_ase.models import CHGNET_PRETRAINED_VERSIONS, resolve_model

    params = dict(overrides)
    model = params.pop("model", _CHGNET_DEFAULT_MODEL)
    use_device = params.pop("use_device", None)
    spec = None
    if isinstance(model, str | os.PathLike):
        bare_version = str(model) in CHGNET_PRETRAINED_VERSIONS and not Path(model).is_file()
        spec = resolve_model(f"CHGNet-{model}" if bare_version else model)
        if spec.kind != "chgnet":
            raise ValueError(f"the chgnet labeler needs a CHGNet model, not {model!r}")
        loaded = load_chgnet_model(spec, use_device=use_device)
    else:
        loaded, model = model, type(model).__name__
    # CHGNet predicts stress in GPa; the calculator multiplies by stress_weight (units.GPa
    # by default) so that ASE gets eV/Å³. Keep that default unless overridden.
    params.setdefault("stress_weight", units.GPa)
    calc = CHGNetCalculator(model=loaded, use_device=use_device, **params)
    # CHGNet stores free_energy (= energy) but does not list it: make
    # get_potential_energy(force_consistent=True) work as for other calculators
    calc.implemented_properties = (*calc.implemented_properties, "free_energy")
    if directory is not None:
        calc.directory = str(directory)
    # CHGNetCalculator keeps nothing in its parameters: record the settings it was built with
    calc.parameters.update({"model": model, **params})
    if spec is not None:
        calc.identity = spec.identity  # the model's content identity (see labeler_info)
    return calc


# --------------------------------------------------------------------------- registry

_BUILDERS = {
    "vasp": _make_vasp,
    "gpaw": _make_gpaw,
    "gpaw-lcao": _make_gpaw_lcao,
    "xtb": _make_xtb,
    "emt": _make_emt,
    "tersoff": _make_tersoff,
    "sw": _make_sw,
    "chgnet": _make_chgnet,
}
_PACKAGES = {
    "gpaw": ("gpaw", "gpaw"),
    "gpaw-lcao": ("gpaw", "gpaw"),
    "xtb": ("tblite", "xtb"),
    "tersoff": ("matscipy", "classical"),
    "sw": ("matscipy", "classical"),
    "chgnet": ("chgnet", "chgnet"),
}

#: Names accepted by :func:`make_labeler`.
KNOWN_LABELERS: tuple[str, ...] = tuple(_BUILDERS)


def check_labeler(
    name: Any, symbols: Iterable[str] = (), overrides: Mapping[str, Any] | None = None
) -> None:
    """Fail early (and cheaply) when a labeler cannot run for these elements.

    Checks the name, that the Python package is installed, the override keys (each must be
    a keyword of that calculator: for VASP an INCAR tag or ``Vasp`` setting that ASE knows,
    see :func:`check_labeler_settings`), builds the calculators that are cheap to build
    (GPAW, without computing anything; the classical ones) so that a bad value fails here,
    and, for VASP (by name or a ``Vasp`` object), checks the command and the POTCAR of every
    element. A CHGNet model is resolved, not loaded.

    Raises
    ------
    ValueError
        Unknown name, an unknown override key (the message suggests the nearest known one),
        or a value the calculator refuses (the message names the labeler and the settings).
    LabelerSetupError
        The program, its data or the Python package is missing.
    """
    overrides = dict(overrides or {})
    if not isinstance(name, str):
        if not is_calculator(name):
            raise TypeError(
                f"a labeler is a name or a calculator object, not {type(name).__name__}"
            )
        from ase.calculators.vasp import Vasp

        if isinstance(name, Vasp):
            params = dict(getattr(name, "parameters", {}))
            check_vasp_setup(symbols, command=getattr(name, "command", None), **params)
        return
    key = _canonical_name(name)
    if key in _PACKAGES:
        module, extra = _PACKAGES[key]
        if importlib.util.find_spec(module) is None:
            raise LabelerSetupError(
                f"the {key} labeler needs {module!r}: pip install pfd_ase[{extra}]"
            )
    check_labeler_settings(key, overrides)
    if key == "vasp":
        check_vasp_setup(symbols, **overrides)


#: Hints for keys that belong elsewhere in a labeler's settings (a common first guess).
_KEY_HINTS: dict[str, dict[str, str]] = {
    "xtb": {"xc": "xtb sets its Hamiltonian with method: GFN1-xTB or GFN2-xTB"},
    "gpaw": {
        "ecut": "GPAW sets the plane-wave cutoff inside mode: {name: pw, ecut: 400}",
        "encut": "GPAW sets the plane-wave cutoff inside mode: {name: pw, ecut: 400}",
        "kspacing": "GPAW sets the k-point density in kpts: {density: 2.0, gamma: false}",
        "sigma": "GPAW sets the smearing width in occupations: {name: ..., width: 0.05}",
        "smearing": "GPAW sets the smearing in occupations: {name: ..., width: 0.05}",
    },
}


def check_labeler_settings(name: str, overrides: Mapping[str, Any]) -> None:
    """Check a labeler's override keys (and, where building is cheap, their values).

    Every key must be a keyword of the labeler's calculator: for ``vasp`` an INCAR tag or
    ``Vasp`` setting that ASE knows (the lists of ``ase.calculators.vasp.create_input``;
    a tag ASE does not know goes under ``custom: {TAG: value}``), for ``gpaw`` a ``GPAW``
    keyword, for ``chgnet`` ``model``, ``use_device`` or a ``CHGNetCalculator`` keyword
    (the model is resolved, not loaded), for ``tersoff``/``sw`` ``parameters``. GPAW, EMT
    and the classical labelers are then built (nothing is computed) so that a bad value
    fails here rather than in every labelling task.

    Raises
    ------
    ValueError
        An unknown key (with the nearest known key, or where the setting belongs), or a
        value the calculator refuses; the message names the labeler and the settings.
    """
    key = _canonical_name(name)
    overrides = dict(overrides)
    _check_corrections(key, overrides.pop("dispersion", None), overrides.pop("vacuum_A", None))
    known = _known_keys(key)
    if known is not None:
        for item in overrides:
            if item not in known:
                raise ValueError(_unknown_key_message(key, str(item), known))
    if key == "chgnet":
        _check_chgnet_model(overrides.get("model", _CHGNET_DEFAULT_MODEL))
        return
    if key == "vasp":
        return  # building a Vasp object checks nothing more than the keys
    try:
        if key in ("gpaw", "gpaw-lcao"):  # no log file, no computation
            _BUILDERS[key](None, {**overrides, "txt": None})
        else:
            _BUILDERS[key](None, overrides)
    except LabelerSetupError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{key} labeler with overrides {overrides}: {type(exc).__name__}: {exc}"
        ) from exc


def _known_keys(key: str) -> frozenset[str] | None:
    """The override keys a labeler takes (``None``: its builder checks them itself)."""
    import inspect

    from ase.calculators.calculator import Calculator

    base = set(inspect.signature(Calculator.__init__).parameters) - {"self", "kwargs"}
    if key == "vasp":
        return _vasp_keys()
    if key in ("gpaw", "gpaw-lcao"):
        try:
            from gpaw.dft import GPAW as gpaw_factory  # noqa: N811 - GPAW >= 25
        except ImportError:  # older GPAW: the keywords are its default parameters
            try:
                from gpaw.calculator import GPAW as gpaw_class  # noqa: N811
            except ImportError:
                return None
            return frozenset(gpaw_class.default_parameters) | {"txt", "communicator"}
        return frozenset(inspect.signature(gpaw_factory).parameters) - {"filename"}
    if key == "emt":
        from ase.calculators.emt import EMT

        return frozenset(EMT.default_parameters) | base
    if key == "chgnet":
        try:
            from chgnet.model.dynamics import CHGNetCalculator
        except ImportError:
            return None
        params = inspect.signature(CHGNetCalculator.__init__).parameters
        return frozenset(params) - {"self", "kwargs"} | base | {"model", "use_device"}
    if key == "xtb":
        try:
            from tblite.ase import TBLite
        except ImportError:
            return None
        return frozenset(TBLite.default_parameters) | base
    return None  # tersoff, sw: _manybody refuses unknown settings itself


@functools.cache
def _vasp_keys() -> frozenset[str]:
    """Every keyword ASE's ``Vasp`` knows: the INCAR tags of ``create_input`` and the
    ``Vasp``/``GenerateVaspInput`` settings (``xc``, ``pp``, ``kpts``, ``command``...)."""
    import inspect

    from ase.calculators.vasp import Vasp
    from ase.calculators.vasp import create_input as ci

    keys: set[str] = set()
    for attr in dir(ci):
        value = getattr(ci, attr)
        if attr.endswith("_keys") and isinstance(value, list | tuple | set | frozenset):
            keys |= {str(k) for k in value}
    keys |= set(ci.GenerateVaspInput().input_params)
    keys |= set(inspect.signature(Vasp.__init__).parameters) - {"self", "kwargs"}
    return frozenset(keys)


def _unknown_key_message(labeler: str, key: str, known: frozenset[str]) -> str:
    import difflib

    text = f"unknown {labeler} setting {key!r} in the labeler overrides"
    hint = _KEY_HINTS.get(labeler, {}).get(key.lower())
    if hint is not None:
        return f"{text}: {hint}"
    if labeler == "vasp" and key.lower() in known:
        return f"{text}: ASE's Vasp takes lower-case keywords, {key.lower()!r}"
    close = difflib.get_close_matches(key.lower(), sorted(known), n=1, cutoff=0.6)
    text += f"; did you mean {close[0]!r}?" if close else ""
    if labeler == "vasp":
        return (
            f"{text} (not an INCAR tag or Vasp setting that ASE knows; a tag ASE does not know "
            f"goes under custom: {{{key.upper()}: value}})"
        )
    if len(known) <= 60:
        text += f" (known: {', '.join(sorted(known))})"
    return text


def _check_chgnet_model(model: Any) -> None:
    """The chgnet labeler's ``model`` resolves to a CHGNet model (nothing is loaded)."""
    if not isinstance(model, str | os.PathLike):
        return  # a model object, from Python
    from pfd_ase.models import CHGNET_PRETRAINED_VERSIONS, resolve_model

    bare_version = str(model) in CHGNET_PRETRAINED_VERSIONS and not Path(model).is_file()
    spec = resolve_model(f"CHGNet-{model}" if bare_version else model)
    if spec.kind != "chgnet":
        raise ValueError(f"the chgnet labeler needs a CHGNet model, not {model!r}")


# --------------------------------------------------------------------------- provenance


#: ASE names (``calc.name``) of calculator classes whose labeler name differs
#: (ASE names a class without its own name by its class name, lower-cased).
_LABELER_NAMES = {"chgnetcalculator": "chgnet", "tblite": "xtb"}


def labeler_info(calc: Any) -> dict[str, Any]:
    """Name and JSON-serialisable settings of a labeler, to record with each frame.

    Returns
    -------
    dict
        ``name``: the labeler's name (``calc.name``, the class name when it has none; a
        CHGNet calculator is ``"chgnet"``). ``settings``: the calculator's ``parameters``
        (an ASE calculator's settings; GPAW's parameter object through its ``todict()``;
        ``todict()`` of an object without parameters), plus ``version`` (the distribution
        that provides the calculator's class and its version, e.g. ``"matscipy 1.3.1"``)
        and ``identity`` when the calculator exposes one (the content identity of a
        model, :attr:`pfd_ase.calculators.PFDCalculator.identity`). A parameter of the
        same name as one of these two is kept and the derived entry left out.

    Strings in the settings are kept free of ``"`` and ``\\`` so that they survive ASE's
    extxyz comment line.
    """
    name = getattr(calc, "name", None)
    if not isinstance(name, str) or not name:
        name = type(calc).__name__
    name = _LABELER_NAMES.get(name, name)
    settings: Any = getattr(calc, "parameters", None)
    if settings is None and callable(getattr(calc, "todict", None)):
        settings = calc
    try:
        settings = jsonable(settings)  # a mapping, or an object's todict()
    except Exception:  # a provenance record must never break labelling
        settings = {}
    if not isinstance(settings, dict):
        settings = {}
    version = _class_version(type(calc))
    if version is not None:
        settings.setdefault("version", version)
    identity = getattr(calc, "identity", None)
    if identity is not None:
        settings.setdefault("identity", jsonable(identity))
    return {"name": name, "settings": settings}


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: numpy to Python, objects to ``todict()`` or their class name."""
    import numpy as np

    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else str(obj)
    if isinstance(obj, str):
        return obj.replace("\\", "/").replace('"', "'")
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return jsonable(os.fspath(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        return [jsonable(v) for v in items]
    todict = getattr(obj, "todict", None)
    if callable(todict):
        try:
            return jsonable(todict())
        except Exception:
            pass
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


@functools.cache
def _class_version(cls: type) -> str | None:
    """``"<distribution> <version>"`` of the package that defines ``cls``, or ``None``."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    top = cls.__module__.partition(".")[0]
    for dist in dict.fromkeys(packages_distributions().get(top, [])):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None
