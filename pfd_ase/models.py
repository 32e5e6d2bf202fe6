"""Which model is this? One answer for the whole package: :func:`resolve_model`.

Every place that takes a model (``PFDCalculator``, the labelers, fine-tuning, the run
configuration, exploration, caches of validation results) calls :func:`resolve_model`
and gets a :class:`ModelSpec`: the kind of model (``"deepmd"``, ``"chgnet"`` or
``"sevennet"``), its file, its head, its type map and a stable identity (a content hash) for
caches and provenance.

Accepted forms
--------------
- a deepmd-kit PyTorch model file: a frozen ``.pth`` or a checkpoint ``.pt`` (single- or
  multi-task; a multi-task checkpoint needs ``head``, a branch name or alias, any case);
- a CHGNet checkpoint file: ``*.pth.tar`` (CHGNet ``Trainer.save``) or ``*.chgnet.pt``;
- the name of a pre-trained CHGNet shipped in the ``chgnet`` wheel: ``"chgnet"``
  (= ``"CHGNet-0.3.0"``), ``"CHGNet-0.2.0"``, ``"CHGNet-r2scan"`` (any case);
- a SevenNet checkpoint: a ``.pth`` file that ``torch.save`` wrote holding a dict with
  ``config`` and ``model_state_dict`` (what ``sevenn`` and
  :func:`pfd_ase.training.sevennet.finetune_sevennet` write; told apart from a frozen
  deepmd-kit ``.pth``, a TorchScript archive, by reading the archive's pickle without
  unpickling it: :func:`is_sevennet_checkpoint`);
- SevenNet-0, shipped in the ``sevenn`` wheel: ``"7net-0"``, ``"SevenNet-0"`` or
  ``"sevennet"`` (any case);
- the name of a deepmd-kit pre-trained model (``"DPA-3.1-3M"``...), resolved through
  deepmd-kit's model cache (a download, which fails offline with a clear message).

Nothing heavy is imported here: torch only to read a checkpoint's parameters.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "CHGNET_PRETRAINED_VERSIONS",
    "RANDOM_HEAD",
    "SEVENNET_PRETRAINED_NAMES",
    "ModelNotFoundError",
    "ModelSpec",
    "checkpoint_params",
    "chgnet_pretrained_version",
    "deepmd_registry_names",
    "head_aliases",
    "is_sevennet_checkpoint",
    "list_heads",
    "read_sevennet_checkpoint",
    "resolve_model",
    "sevennet_pretrained_name",
    "sevennet_pretrained_path",
]

#: Pre-trained CHGNet versions shipped inside the ``chgnet`` wheel.
CHGNET_PRETRAINED_VERSIONS = ("0.3.0", "0.2.0", "r2scan")
_CHGNET_DEFAULT_VERSION = "0.3.0"
#: Head name that asks fine-tuning for a freshly initialised fitting net (deepmd-kit's own).
RANDOM_HEAD = "RANDOM"
_CHGNET_SUFFIXES = (".pth.tar", ".chgnet.pt")
_MODEL_SUFFIXES = (".pt", ".pth", ".tar")
_HASH_CHUNK = 1 << 20
#: Canonical name of the SevenNet model shipped in the ``sevenn`` wheel, and its accepted
#: spellings (lower case).
_SEVENNET_0 = "SevenNet-0"
SEVENNET_PRETRAINED_NAMES = ("7net-0", "sevennet-0", "sevennet")
#: Where ``sevenn`` 0.13 keeps SevenNet-0 (the 11 July 2024 weights) inside its package.
_SEVENNET_0_FILE = ("pretrained_potentials", "SevenNet_0__11Jul2024", "checkpoint_sevennet_0.pth")
#: Largest pickle (bytes) read to tell a SevenNet checkpoint from another ``.pth`` file.
_SNIFF_LIMIT = 1 << 24


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"{exc}. Install the optional dependency: pip install 'pfd_ase[{extra}]'")


class ModelNotFoundError(FileNotFoundError, ValueError):
    """No model file at that path and no pre-trained model of that name."""


# --------------------------------------------------------------------------- names
def chgnet_pretrained_version(name: str | os.PathLike) -> str | None:
    """The pre-trained CHGNet version a name refers to, or ``None``.

    ``"chgnet"`` is the default version (0.3.0); ``"CHGNet-<version>"`` (any case) names a
    version shipped in the wheel. A path that exists as a file, or that has a directory
    part, is never a name.
    """
    text = os.fspath(name)
    if Path(text).is_file() or Path(text).name != text:
        return None
    key = text.strip().lower()
    if key == "chgnet":
        return _CHGNET_DEFAULT_VERSION
    if key.startswith("chgnet-") and key[len("chgnet-") :] in CHGNET_PRETRAINED_VERSIONS:
        return key[len("chgnet-") :]
    return None


def sevennet_pretrained_name(name: str | os.PathLike) -> str | None:
    """``"SevenNet-0"`` when ``name`` spells it (``"7net-0"``, ``"sevennet"``, any case), else
    ``None``; an existing file or a path with a directory part is never a name."""
    text = os.fspath(name)
    if Path(text).is_file() or Path(text).name != text:
        return None
    return _SEVENNET_0 if text.strip().lower() in SEVENNET_PRETRAINED_NAMES else None


def sevennet_pretrained_path() -> Path | None:
    """SevenNet-0's checkpoint inside the installed ``sevenn`` wheel (``None`` without
    ``sevenn``); found without importing ``sevenn``."""
    try:
        found = importlib.util.find_spec("sevenn")
    except (ImportError, ValueError):  # e.g. sys.modules["sevenn"] is None
        return None
    if found is None or found.origin is None:
        return None
    path = Path(found.origin).parent.joinpath(*_SEVENNET_0_FILE)
    return path if path.is_file() else None


def deepmd_registry_names() -> list[str]:
    """Names of deepmd-kit's pre-trained models (``[]`` when deepmd-kit is not installed)."""
    try:
        from deepmd.pretrained.registry import available_model_names
    except ImportError:
        return []
    return list(available_model_names())


# --------------------------------------------------------------------------- checkpoints
def checkpoint_params(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model_params`` stored in a deepmd-kit PyTorch checkpoint (``.pt``)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a deepmd dependency
        raise _missing("deepmd", exc) from exc
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read deepmd-kit checkpoint {path}: {load_error_reason(exc)}"
        ) from exc
    state = state.get("model", state) if isinstance(state, dict) else None
    try:
        params = state["_extra_state"]["model_params"]
    except (KeyError, TypeError):
        params = None
    if not isinstance(params, dict):
        raise ValueError(
            f"{path} is not a deepmd-kit PyTorch checkpoint (no model_params in its _extra_state)"
        )
    return params


def load_error_reason(exc: Exception) -> str:
    """One line on why ``torch.load``/``torch.jit.load`` failed (their messages run long)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found is not None:
        return (
            f"it needs the Python object {found.group(1)}, beyond tensors and plain data: "
            "not unpickled"
        )
    damaged = ("zip archive", "mmap can only be used", "PytorchStreamReader", "magic number")
    if isinstance(exc, pickle.UnpicklingError) or any(d in text for d in damaged):
        return "damaged or not a torch file"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def is_sevennet_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a SevenNet checkpoint (``sevenn``'s ``.pth`` format).

    True for a ``torch.save`` archive (not TorchScript: no ``code/`` entries) whose pickle
    names both ``config`` and ``model_state_dict``. The pickle's opcodes are read with
    :mod:`pickletools`, never executed, so a frozen deepmd-kit ``.pth`` (a TorchScript
    archive), a damaged file or any other file is simply not one.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
                return False
            pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1 or archive.getinfo(pickles[0]).file_size > _SNIFF_LIMIT:
                return False
            data = archive.read(pickles[0])
        strings = {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except Exception:  # unreadable in any way: not a SevenNet checkpoint
        return False
    return {"config", "model_state_dict"} <= strings


def _numpy_globals() -> list[Any]:
    """What a ``sevenn`` checkpoint needs beyond tensors and plain data: numpy arrays."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    reconstruct = core.multiarray._reconstruct  # how numpy pickles an array
    dtypes = [type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8", "b1")]
    return [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dtypes,
    ]


def read_sevennet_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of a SevenNet checkpoint, loaded safely.

    ``torch.load(..., weights_only=True)`` with numpy arrays allowed: tensors, plain data
    and numpy arrays, which is all a ``sevenn`` checkpoint holds (``config``,
    ``model_state_dict``, optionally ``optimizer_state_dict``, ``scheduler_state_dict``,
    ``epoch``). A file that needs any other Python object to load is refused instead of
    unpickled (unpickling runs code the file names).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file cannot be read, needs other Python objects, or holds no SevenNet model
        (``config`` and ``model_state_dict``); the message names the file.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch comes with sevenn
        raise _missing("sevennet", exc) from exc
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SevenNet checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read SevenNet checkpoint {path}: {load_error_reason(exc)}"
        ) from exc
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("config"), dict)
        or not isinstance(state.get("model_state_dict"), dict)
    ):
        raise ValueError(f"{path} is not a SevenNet checkpoint (no config and model_state_dict)")
    return state


def list_heads(path: str | os.PathLike) -> list[str]:
    """Branches of a deepmd-kit checkpoint (``[]`` for a single-task model or a frozen model)."""
    if Path(path).suffix != ".pt" or _is_chgnet_file_name(Path(path)):
        return []
    return list(checkpoint_params(path).get("model_dict", {}))


def head_aliases(params: dict[str, Any]) -> dict[str, str]:
    """Map every head name and alias (lower-cased) of checkpoint ``params`` to its head."""
    out: dict[str, str] = {}
    for name, branch in params.get("model_dict", {}).items():
        for alias in [name, *branch.get("model_branch_alias", [])]:
            out.setdefault(alias.lower(), name)
    return out


def _is_chgnet_file_name(path: Path) -> bool:
    return any(path.name.endswith(s) for s in _CHGNET_SUFFIXES)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: what it is, where it is, which head.

    Attributes
    ----------
    kind
        ``"deepmd"``, ``"chgnet"`` or ``"sevennet"``.
    source
        What the caller passed (a path or a name).
    path
        The model file (``None`` for a pre-trained CHGNet or SevenNet-0, whose weights ship
        in their wheels, and for a deepmd-kit registry name not fetched yet).
    name
        Canonical pre-trained name (``"CHGNet-0.3.0"``, ``"SevenNet-0"``, ``"DPA-3.1-3M"``),
        else ``None``.
    head
        Canonical head of a multi-task checkpoint, ``"RANDOM"`` (fine-tuning with a fresh
        fitting net), or ``None``.
    heads
        All heads of a multi-task checkpoint (empty otherwise).
    """

    kind: str
    source: str
    path: Path | None = None
    name: str | None = None
    head: str | None = None
    heads: tuple[str, ...] = field(default=())

    @cached_property
    def type_map(self) -> tuple[str, ...] | None:
        """Elements the model knows (``None`` when it cannot be read without fetching it)."""
        if self.kind == "chgnet":
            from ase.data import chemical_symbols

            return tuple(chemical_symbols[1:95])  # CHGNet embeds Z = 1..94
        if self.kind == "sevennet":
            path = self.path if self.path is not None else sevennet_pretrained_path()
            if path is None:  # SevenNet-0 named, sevenn not installed
                return None
            species = read_sevennet_checkpoint(path)["config"].get("chemical_species")
            return tuple(species) if isinstance(species, list) else None
        if self.path is None:
            return None
        if self.path.suffix == ".pt":
            params = checkpoint_params(self.path)
            if self.heads:
                shared = params.get("shared_dict", {})
                branch = params["model_dict"].get(self.head or "", {})
                tm = branch.get("type_map")
                if isinstance(tm, str):  # a key into shared_dict
                    tm = shared.get(tm)
                tm = tm if isinstance(tm, list) else shared.get("type_map_all")
            else:
                tm = params.get("type_map")
            return tuple(tm) if isinstance(tm, list) else None
        try:
            import torch
        except ImportError as exc:  # pragma: no cover
            raise _missing("deepmd", exc) from exc
        try:
            model = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:
            raise ValueError(
                f"cannot read frozen deepmd-kit model {self.path}: {load_error_reason(exc)}"
            ) from exc
        return tuple(model.get_type_map())

    @cached_property
    def identity(self) -> str:
        """Stable identity for caches and provenance: kind, content hash (or name) and head.

        Two specs of the same file content and head have the same identity wherever the
        file lies; a retrained model at the same path gets a new one.
        """
        if self.path is not None:
            what = f"sha256={_file_hash(self.path)}"
        elif self.kind in ("chgnet", "sevennet"):
            dist = "chgnet" if self.kind == "chgnet" else "sevenn"
            what = f"{self.name}@{dist}-{_package_version(dist)}"
        else:
            what = f"{self.name}"
        return f"{self.kind}:{what}:head={self.head}"

    @property
    def is_pretrained(self) -> bool:
        """Whether the model was named (a pre-trained model) rather than given as a file."""
        return self.name is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe provenance record: kind, path, name, head, identity."""
        return {
            "kind": self.kind,
            "path": str(self.path) if self.path is not None else None,
            "name": self.name,
            "head": self.head,
            "identity": self.identity,
        }

    def fetch(self) -> ModelSpec:
        """This spec with ``path`` set: a deepmd-kit registry model fetched into its cache.

        Raises ``RuntimeError`` offline, with what to do instead.
        """
        if self.path is not None or self.kind != "deepmd":
            return self
        try:
            from deepmd.pretrained.download import resolve_model_path
        except ImportError as exc:  # pragma: no cover - deepmd-kit missing
            raise _missing("deepmd", exc) from exc
        try:
            path = Path(resolve_model_path(str(self.name)))
        except Exception as exc:
            raise RuntimeError(
                f"could not download pre-trained model {self.name!r} ({exc}). Without network "
                "access, fetch the checkpoint on another machine and pass its path instead."
            ) from exc
        spec = resolve_model(path, head=self.head)
        return ModelSpec(spec.kind, self.source, spec.path, self.name, spec.head, spec.heads)


def resolve_model(
    model: str | os.PathLike | ModelSpec, head: str | None = None, *, fetch: bool = False
) -> ModelSpec:
    """Resolve a model path or name into a :class:`ModelSpec`, checking the head.

    Parameters
    ----------
    model
        A model file, a pre-trained name (see the module docstring) or a spec.
    head
        Branch of a multi-task deepmd-kit checkpoint (name or alias, any case). Required
        for a multi-task checkpoint; ``"RANDOM"`` (fine-tuning only) asks for a fresh
        fitting net; must be ``None`` for frozen deepmd-kit models, CHGNet and SevenNet.
    fetch
        Fetch a deepmd-kit registry model now (a download) so that ``path`` is set;
        otherwise its ``path`` stays ``None`` until :meth:`ModelSpec.fetch`.

    Raises
    ------
    ModelNotFoundError
        (a ``FileNotFoundError`` and a ``ValueError``) no such file and no such name.
    ValueError
        An unknown name or file kind, or a head the model lacks (the message lists the
        heads), or a head given for a model without heads.
    """
    if isinstance(model, ModelSpec):
        if head is None or head == model.head:
            return model.fetch() if fetch else model
        model = model.path if model.path is not None else (model.name or model.source)
    source = os.fspath(model)
    path = Path(source)

    version = chgnet_pretrained_version(source)
    if version is not None:
        _no_head(head, f"CHGNet-{version}", "CHGNet models have a single energy head")
        return ModelSpec("chgnet", source, None, f"CHGNet-{version}")
    sevennet = sevennet_pretrained_name(source)
    if sevennet is not None:
        _no_head(head, sevennet, "SevenNet models have a single energy head")
        return ModelSpec("sevennet", source, None, sevennet)

    if path.is_file():
        if _is_chgnet_file_name(path):
            _no_head(head, path, "CHGNet models have a single energy head")
            return ModelSpec("chgnet", source, path)
        if path.suffix == ".pth" and is_sevennet_checkpoint(path):
            _no_head(head, path, "SevenNet models have a single energy head")
            return ModelSpec("sevennet", source, path)
        if path.suffix == ".pth":
            _no_head(head, path, f"{path} is a single-task model (it has no heads)")
            return ModelSpec("deepmd", source, path)
        if path.suffix == ".pt":
            return _deepmd_checkpoint(source, path, head)
        raise ValueError(
            f"cannot tell which kind of model {path} is: expected a deepmd-kit .pt/.pth file, "
            "a CHGNet checkpoint (*.pth.tar, *.chgnet.pt), a SevenNet checkpoint (.pth) "
            "or a pre-trained model name"
        )

    names = deepmd_registry_names()
    if source in names:
        if head is not None and head.upper() == RANDOM_HEAD:
            head = RANDOM_HEAD
        spec = ModelSpec("deepmd", source, None, source, head)
        return spec.fetch() if fetch else spec
    if _is_chgnet_file_name(path):
        raise ModelNotFoundError(
            f"no CHGNet checkpoint at {path} (pre-trained names: 'chgnet', "
            f"{', '.join(repr('CHGNet-' + v) for v in CHGNET_PRETRAINED_VERSIONS)})"
        )
    if path.name != source or path.suffix in _MODEL_SUFFIXES:
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ModelNotFoundError(f"model file not found: {path}{where}")
    if source.strip().lower().startswith("chgnet"):
        raise ModelNotFoundError(
            f"no pre-trained CHGNet named {source!r}: the chgnet wheel ships 'chgnet' (= "
            f"'CHGNet-{_CHGNET_DEFAULT_VERSION}'), "
            f"{', '.join(repr('CHGNet-' + v) for v in CHGNET_PRETRAINED_VERSIONS)}; "
            "a fine-tuned CHGNet is a *.pth.tar or *.chgnet.pt file"
        )
    if source.strip().lower().startswith(("7net", "sevennet")):
        raise ModelNotFoundError(
            f"no pre-trained SevenNet named {source!r}: the package uses SevenNet-0 (shipped "
            f"in the sevenn wheel), named {', '.join(map(repr, SEVENNET_PRETRAINED_NAMES))}; "
            "a fine-tuned SevenNet is a .pth checkpoint file"
        )
    known = [
        "chgnet",
        *(f"CHGNet-{v}" for v in CHGNET_PRETRAINED_VERSIONS),
        _SEVENNET_0,
        *names,
    ]
    raise ModelNotFoundError(
        f"{source!r} is neither an existing model file nor a pre-trained model name "
        f"({', '.join(known)})"
    )


def _no_head(head: str | None, what: Any, why: str) -> None:
    if head is not None:
        raise ValueError(f"{why}; do not pass head={head!r} ({what})")


def _deepmd_checkpoint(source: str, path: Path, head: str | None) -> ModelSpec:
    params = checkpoint_params(path)
    heads = tuple(params.get("model_dict", {}))
    if head is not None and head.upper() == RANDOM_HEAD:
        return ModelSpec("deepmd", source, path, None, RANDOM_HEAD, heads)
    if not heads:
        why = f"{path} is a single-task model (it has no heads; 'RANDOM' fine-tunes)"
        _no_head(head, path, why)
        return ModelSpec("deepmd", source, path)
    if head is None:
        raise ValueError(
            f"{path} is a multi-task model: choose a head with head=...; "
            f"available heads: {list(heads)}"
        )
    aliases = head_aliases(params)
    if head.lower() not in aliases:
        raise ValueError(f"no head named {head!r} in {path}; available heads: {list(heads)}")
    return ModelSpec("deepmd", source, path, None, aliases[head.lower()], heads)
