"""pfd_ase.tasks: task keys, records, the rule for existing records, calculator specs and the
executor loop (serial order, executor failures recorded, pending calls cancelled on early stop);
the import structure of the task runners."""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

import pfd_ase.tasks as tasks
from pfd_ase.tasks import (
    CalculatorSpec,
    MismatchedTaskError,
    StaleRecordWarning,
    calculator,
    calculator_spec,
    canonical_definition,
    clear_calculators,
    failure_record,
    move_aside,
    numbered_dir,
    run_each,
    split_finished,
    start_task,
    task_key,
    write_done,
    write_failure,
)

from conftest import LosingExecutor


def _square(x: int) -> int:
    return x * x


def _record(item: int, exc: Exception) -> str:
    return f"failed: {exc}"


def emt_factory() -> EMT:
    return EMT()


# --------------------------------------------------------------------------- executor loop


def test_serial_runs_in_order_in_this_process():
    assert list(run_each(_square, [3, 1, 2], None, _record)) == [(3, 9), (1, 1), (2, 4)]


def test_executor_results_and_a_lost_worker_recorded():
    out = dict(run_each(_square, [1, 2, 3], LosingExecutor(lambda x: x == 2), _record))
    assert out == {1: 1, 2: "failed: worker lost", 3: 9}
    with ThreadPoolExecutor(2) as pool:
        assert dict(run_each(_square, range(6), pool, _record)) == {i: i * i for i in range(6)}


def test_stopping_early_cancels_the_calls_not_started():
    executor = LosingExecutor(lambda x: False, pending=lambda x: x in (2, 3))
    results = run_each(_square, [1, 2, 3], executor, _record)
    assert next(results) == (1, 1)
    results.close()  # the caller stops (an error, Ctrl-C)
    assert [f.cancelled() for f in executor.futures] == [False, True, True]


def test_the_loop_is_one_function():
    from pfd_ase import parallel

    assert parallel.run_each is tasks.run_each  # re-exported, not a second loop


# --------------------------------------------------------------------------- keys, directories


def test_task_key_is_stable():
    definition = {"frame": "abc", "labeler": {"name": "emt", "options": {}}, "t": 300.0}
    canonical = '{"frame":"abc","labeler":{"name":"emt","options":{}},"t":300.0}'
    assert task_key(definition) == hashlib.sha256(canonical.encode()).hexdigest()
    # order of keys, tuples or lists, numpy or Python numbers: one key
    same = {"t": np.float64(300.0), "labeler": {"options": {}, "name": "emt"}, "frame": "abc"}
    assert task_key(same) == task_key(definition)
    assert task_key({"x": (1, 2)}) == task_key({"x": [1, 2]}) == task_key({"x": np.arange(1, 3)})
    # anything that defines the task changes it
    assert task_key({**definition, "t": 300.1}) != task_key(definition)
    assert task_key({**definition, "frame": "abd"}) != task_key(definition)
    # canonical form: JSON-safe, idempotent, same key
    odd = {("Si", "O"): 1.5, "path": Path("a/b"), "inf": float("inf")}
    stored = canonical_definition(odd)
    assert json.loads(json.dumps(stored)) == stored == canonical_definition(stored)
    assert task_key(stored) == task_key(odd)


def test_task_key_pinned_value():
    # the canonical JSON and its hash must not drift between versions (resumable workdirs)
    key = task_key({"b": [1, 2.5, None], "a": "x"})
    assert key == hashlib.sha256(b'{"a":"x","b":[1,2.5,null]}').hexdigest()
    assert key == "ce74053d7a9997b7a9ffa28fba2f736e47c7ebb226ab093038bc0fba3a1554ee"


def test_numbered_dir(tmp_path):
    assert numbered_dir(tmp_path, "task", 7, 6) == tmp_path / "task.000007"
    assert numbered_dir("w", "walker", 12, 4) == Path("w/walker.0012")


# --------------------------------------------------------------------------- records


def test_start_task_and_done_record(tmp_path):
    directory = tmp_path / "task.000000"
    directory.mkdir()
    (directory / "failure.json").write_text("{}")
    (directory / "old.txt").write_text("x")
    assert start_task(directory, "task.json", "k1", {"index": 0}, clear=["old.txt"]) == directory
    assert sorted(p.name for p in directory.iterdir()) == ["task.json"]
    assert json.loads((directory / "task.json").read_text()) == {"key": "k1", "index": 0}
    write_done(directory, "done.json", "k1", {"status": "finished"})
    assert json.loads((directory / "done.json").read_text()) == {
        "key": "k1",
        "status": "finished",
    }


def test_failure_record_fields_and_cause(tmp_path):
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        record = failure_record(exc, attempts=3)
    assert record["exception"] == "RuntimeError" and record["message"] == "outer"
    assert record["attempts"] == 3 and record["cause"] == "KeyError: 'inner'"
    assert "raise RuntimeError" in record["traceback"]
    try:
        try:
            raise ZeroDivisionError("first")
        except ZeroDivisionError:
            raise ValueError("while handling") from None
    except ValueError as exc:
        assert failure_record(exc)["cause"] is None  # suppressed context
        assert failure_record(exc)["attempts"] == 1
    write_failure(tmp_path / "t", record)  # creates the directory
    assert json.loads((tmp_path / "t" / "failure.json").read_text()) == record
    (tmp_path / "file").write_text("")
    write_failure(tmp_path / "file" / "below", record)  # unwritable: ignored


def test_move_aside_numbers_taken_names(tmp_path):
    for n, expected in enumerate(["done.json.stale", "done.json.stale.1", "done.json.stale.2"]):
        (tmp_path / "done.json").write_text(str(n))
        assert move_aside(tmp_path / "done.json") == tmp_path / expected
    assert not (tmp_path / "done.json").exists()
    assert [(tmp_path / name).read_text() for name in ("done.json.stale", "done.json.stale.2")] == [
        "0",
        "2",
    ]


@dataclass
class _T:
    directory: str
    key: str


def _read(directory: Path) -> tuple[str, dict]:
    record = json.loads((directory / "done.json").read_text())
    return record.pop("key"), record


def _tasks(tmp_path, keys):
    return [_T(str(numbered_dir(tmp_path, "t", i, 2)), k) for i, k in enumerate(keys)]


def test_split_finished_reuses_matching_and_runs_missing(tmp_path):
    todo = _tasks(tmp_path, ["a", "b", "c"])
    write_done(todo[1].directory, "done.json", "b", {"value": 1})
    Path(todo[2].directory).mkdir()
    write_failure(todo[2].directory, {"exception": "X"})  # a failure is no done record
    done, run = split_finished(todo, "done.json", _read, workdir=tmp_path, what="x")
    assert done == {1: {"value": 1}} and run == [todo[0], todo[2]]


def test_split_finished_refuses_other_keys_before_touching_anything(tmp_path):
    todo = _tasks(tmp_path, ["a", "b", "c"])
    write_done(todo[0].directory, "done.json", "other", {})
    write_done(todo[2].directory, "done.json", "other", {})
    Path(todo[1].directory).mkdir()
    (Path(todo[1].directory) / "done.json").write_text("{not json")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(MismatchedTaskError, match=r"holds things in t\.00, t\.02; use a fresh"):
        split_finished(todo, "done.json", _read, workdir=tmp_path, what="things")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError):  # a MismatchedTaskError is a ValueError
        split_finished(todo, "done.json", _read, workdir=tmp_path, what="things")


def test_split_finished_moves_unreadable_records_aside(tmp_path):
    todo = _tasks(tmp_path, ["a", "b", "c"])
    for task in todo:
        Path(task.directory).mkdir()
    (Path(todo[0].directory) / "done.json").write_text("{truncat")  # corrupt
    (Path(todo[1].directory) / "done.json").write_text('{"value": 1}')  # no key
    write_done(todo[2].directory, "done.json", "c", {"value": "incomplete"})

    def check(directory: Path, record: dict) -> None:
        if record["value"] == "incomplete":
            raise ValueError("incomplete record")

    with pytest.warns(StaleRecordWarning) as caught:
        done, run = split_finished(
            todo, "done.json", _read, workdir=tmp_path, what="x", check=check
        )
    assert done == {} and run == todo
    assert len(caught) == 3 and "incomplete record" in str(caught[2].message)
    for task in todo:
        assert not (Path(task.directory) / "done.json").exists()
        assert (Path(task.directory) / "done.json.stale").exists()  # kept, not deleted
    assert (Path(todo[0].directory) / "done.json.stale").read_text() == "{truncat"


# --------------------------------------------------------------------------- calculator specs


def test_calculator_spec_forms_and_descriptions():
    spec = calculator_spec(" EMT ")
    assert (spec.kind, spec.name, spec.options) == ("labeler", "emt", {})
    assert spec.description == {"name": "emt", "options": {}}
    pair = calculator_spec(("emt", {"asap_cutoff": True, "directory": "x"}))
    assert pair.options == {"asap_cutoff": True}  # each task sets its own directory
    pfd = calculator_spec(("pfd", {"model": "m.pth", "head": "h"}))
    assert pfd.kind == "pfd" and pfd.description["pfd"] == {"model": "m.pth", "head": "h"}
    assert pfd.description["identity"] is None  # no such file: check() reports it
    obj = calculator_spec(EMT())
    assert obj.kind == "object" and obj.description["object"]["name"] == "emt"
    factory = calculator_spec(functools.partial(emt_factory))
    assert factory.description == {
        "factory": {"func": f"{__name__}.emt_factory", "args": [], "kwargs": {}}
    }
    assert calculator_spec(spec) is spec
    for made in (spec, pair, pfd):
        assert pickle.loads(pickle.dumps(made)) == made
    assert pickle.loads(pickle.dumps(factory)).description == factory.description


def test_calculator_spec_errors():
    with pytest.raises(ValueError, match="unknown labeler 'dft'; known labelers: vasp"):
        calculator_spec("dft")
    with pytest.raises(ValueError, match='needs options\\["model"\\]'):
        calculator_spec(("pfd", {}))
    with pytest.raises(ValueError, match="unknown labeler 'pfd'"):  # not accepted here
        calculator_spec(("pfd", {"model": "m"}), kinds=("labeler", "object"))
    with pytest.raises(
        TypeError, match="labeler must be a labeler name, .* or a calculator object"
    ):
        calculator_spec(emt_factory, kinds=("labeler", "object"), what="labeler")
    with pytest.raises(TypeError, match="model must be .*a calculator factory or a calculator"):
        calculator_spec(42, what="model")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        calculator_spec(("pfd", {"model": ["missing.pth"]})).check()


def test_calculator_is_built_once_per_process_and_reset(tmp_path, monkeypatch):
    built = []

    def counting(name, directory=None, **options):
        built.append((name, directory))
        return EMT()

    monkeypatch.setattr(tasks, "make_labeler", counting)
    clear_calculators()
    spec = calculator_spec("emt")
    with calculator(spec, tmp_path / "a") as first:
        assert first.directory == str(tmp_path / "a")
    with calculator(calculator_spec("emt"), tmp_path / "b") as second:
        assert second is first and second.directory == str(tmp_path / "b")
    assert first.directory == "." and built == [("emt", None)]
    # a labeler that keeps files is built fresh in each task directory
    gpaw = CalculatorSpec("labeler", "gpaw", {}, description={"name": "gpaw"})
    with calculator(gpaw, tmp_path / "c"), calculator(gpaw, tmp_path / "d"):
        pass
    assert built[1:] == [("gpaw", tmp_path / "c"), ("gpaw", tmp_path / "d")]
    # without a directory (exploration) it is built once too
    with calculator(gpaw) as one, calculator(gpaw) as two:
        assert one is two
    clear_calculators()


def test_factories_and_objects(tmp_path):
    calls = []

    def factory():
        calls.append(1)
        return EMT()

    clear_calculators()
    local = calculator_spec(factory)  # not picklable: reused by identity in this process
    with calculator(local) as a, calculator(local) as b:
        assert a is b and len(calls) == 1
    clear_calculators()
    with calculator(local):
        assert len(calls) == 2
    calc = EMT()
    with calculator(calculator_spec(calc), tmp_path) as same:
        assert same is calc and calc.directory == str(tmp_path)
    assert calc.directory == "."
    clear_calculators()


def test_pfd_spec_accepts_pretrained_names_and_refuses_missing_files(tmp_path):
    from pfd_ase.models import ModelNotFoundError
    from pfd_ase.tasks import calculator_spec

    calculator_spec(("pfd", {"model": "7net-0"})).check({"Si"})  # shipped in a wheel
    with pytest.raises(ModelNotFoundError, match="not found"):
        calculator_spec(("pfd", {"model": str(tmp_path / "missing.pth")})).check({"Si"})


def test_a_model_retrained_at_the_same_path_defines_other_tasks(tmp_path, tiny_models):
    """The spec of a PFD model carries its content identity: walkers of a retrained model
    (same path, other weights) get other keys, so stale MD is never reused for it."""
    import shutil

    from pfd_ase.models import resolve_model

    path = tmp_path / "model.pth"
    shutil.copyfile(tiny_models[1]["pth"], path)
    first = calculator_spec(("pfd", {"model": str(path)}))
    assert first.description["identity"] == resolve_model(path).identity
    shutil.copyfile(tiny_models[2]["pth"], path)  # "retrained"
    second = calculator_spec(("pfd", {"model": str(path)}))
    assert second.description["pfd"] == first.description["pfd"]
    assert second.description != first.description
    committee = calculator_spec(("pfd", {"model": [str(path), tiny_models[1]["pth"]]}))
    assert committee.description["identity"] == [
        second.description["identity"],
        first.description["identity"],
    ]
