"""Training progress bar: deepmd-kit's ``lcurve.out`` polled while the subprocess runs."""

from __future__ import annotations

import io

import pytest

from pfd_ase.training import deepmd as dp

from conftest import requires_deepmd, si_frames

#: A very small se_e2_a: training cost is dominated by deepmd-kit's start-up (~10 s).
TINY_SE_E2_A = {
    "type": "se_e2_a",
    "rcut": 4.0,
    "rcut_smth": 3.5,
    "sel": [40],
    "neuron": [4, 8],
    "axis_neuron": 2,
}

HEADER = "#  step   rmse_val   rmse_trn   rmse_e_val   rmse_e_trn   rmse_f_val   rmse_f_trn   lr\n"
NOTE = "# If there is no available reference data, rmse_*_{val,trn} will print nan\n"


def _row(step: int, f_trn: float) -> str:
    return f"{step:7d}   1.0e+00   1.0e+00   2.0e-02   3.0e-02   4.0e-01   {f_trn:.2e}   1.0e-03\n"


def test_lcurve_progress_follows_appended_rows(tmp_path):
    lcurve = tmp_path / "lcurve.out"
    out = io.StringIO()
    bar = dp.LcurveProgress(lcurve, total=20, file=out)
    bar()  # no file yet
    assert bar.bar.n == 0
    lcurve.write_text(HEADER + NOTE + _row(1, 0.9) + _row(5, 0.5)[:12])  # a row half written
    bar()
    assert bar.bar.n == 1 and bar.values == {"rmse_e_trn": 0.03, "rmse_f_trn": 0.9}
    with open(lcurve, "a") as fh:
        fh.write(_row(5, 0.5)[12:] + _row(10, 0.25))
    bar()
    assert bar.bar.n == 10 and bar.values["rmse_f_trn"] == 0.25
    bar.close(finished=True)  # the last row need not be at the last step
    text = out.getvalue()
    assert "20/20" in text and "rmse_f_trn=0.25" in text


def test_lcurve_progress_skips_rows_of_an_earlier_run_and_reads_branches(tmp_path):
    lcurve = tmp_path / "lcurve.out"
    lcurve.write_text(HEADER + NOTE + _row(1, 0.9) + _row(30, 0.1))  # before a kill
    out = io.StringIO()
    bar = dp.LcurveProgress(lcurve, total=100, initial=20, file=out)  # restart at step 20
    bar()
    assert bar.bar.n == 20 and bar.values == {}
    header = "# step rmse_e_trn_cu rmse_f_trn_cu rmse_e_trn_si rmse_f_trn_si lr\n"
    with open(lcurve, "a") as fh:
        fh.write(header + "  40  1.0e-02  2.0e-01  3.0e-02  4.0e-01  1.0e-03\n")
    bar()
    assert bar.bar.n == 40
    assert bar.values == {
        "rmse_e_trn_cu": 0.01,
        "rmse_f_trn_cu": 0.2,
        "rmse_e_trn_si": 0.03,
        "rmse_f_trn_si": 0.4,
    }
    bar.close(finished=False)
    assert "40/100" in out.getvalue()


@pytest.fixture(scope="module")
def si_systems(tmp_path_factory):
    from pfd_ase.data import to_deepmd

    return to_deepmd(si_frames(2, seed=0), tmp_path_factory.mktemp("si") / "data", ["Si"])


def _config(systems, steps: int, disp_freq: int) -> dict:
    model = dp.energy_model(["Si"], TINY_SE_E2_A, {"neuron": [8]})
    return dp.training_input(model, systems, steps=steps, disp_freq=disp_freq, save_freq=steps)


@requires_deepmd
def test_train_shows_a_bar_that_reaches_the_last_step(si_systems, tmp_path, capfd):
    # rows at steps 1, 3, 6, 9: the bar is completed when deepmd-kit ends successfully
    dp.train(_config(si_systems, steps=10, disp_freq=3), tmp_path, threads=1, progress=True)
    err = capfd.readouterr().err
    assert "deepmd train" in err and "10/10" in err
    assert "rmse_e_trn=" in err and "rmse_f_trn=" in err
    assert dp.read_lcurve(tmp_path / "lcurve.out")["step"][-1] == 9


@requires_deepmd
def test_train_without_progress_prints_nothing(si_systems, tmp_path, capfd):
    dp.train(_config(si_systems, steps=2, disp_freq=1), tmp_path, threads=1, progress=False)
    captured = capfd.readouterr()
    assert "deepmd train" not in captured.err and "step/s" not in captured.err
    assert "|" not in captured.err and captured.out == ""


@requires_deepmd
def test_failed_training_closes_the_bar_and_reports_the_log(tmp_path, capfd):
    missing = tmp_path / "no_such_system"
    missing.mkdir()
    cfg = _config([missing], steps=5, disp_freq=1)
    with pytest.raises(RuntimeError, match="deepmd-kit failed") as info:
        dp.train(cfg, tmp_path / "train", threads=1, progress=True)
    assert "No systems provided" in str(info.value)  # the tail of dp.log
    err = capfd.readouterr().err
    assert "0/5" in err and "5/5" not in err
