"""Perfect-cell stability before a vacancy: phases a model does not hold get no E_f."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from pfd_ase.analysis.vacancy import (
    perfect_cell_stability,
    vacancy_flags,
    vacancy_formation_energy,
)
from pfd_ase.materials import silicon_phases, supercell

pytest.importorskip("spglib")
pytest.importorskip("matscipy")


@pytest.fixture(scope="module")
def sw():
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms import StillingerWeber
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
        Stillinger_Weber_PRB_31_5262_Si,
    )

    return Manybody(**StillingerWeber(Stillinger_Weber_PRB_31_5262_Si))


@pytest.fixture(scope="module")
def phases():
    return silicon_phases()


# Stillinger-Weber Si at fixed cell (the phases' near-PBE lattices): only the tetrahedral
# diamond and hexagonal-diamond phases are minima. The three-body term, zero only at the
# tetrahedral angle, makes the close-packed phases collapse (over 1 eV/atom lower), and
# BC8 distorts into a rhombohedral R-3 (148) structure.
SW_FIXED_CELL = [  # phase, supercell, stable, its space group, the rattled copy's
    ("diamond", 1, True, 227, 227),
    ("hex_diamond", 1, True, 194, 194),
    ("fcc", 1, False, 225, None),
    ("bcc", 2, False, 229, None),
    ("hcp", 1, False, 194, None),
    ("beta_sn", 1, False, 141, None),
    ("bc8", 1, False, 206, 148),
]


@pytest.mark.parametrize(("phase", "size", "stable", "group", "final"), SW_FIXED_CELL)
def test_sw_silicon_phase_stability(sw, phases, phase, size, stable, group, final):
    cell = supercell(phases[phase], size)
    before = cell.copy()
    r = perfect_cell_stability(cell, sw)
    assert cell == before and cell.calc is None
    json.dumps(r)
    assert r["stable"] is stable, r["reason"]
    assert r["space_group"] == group and r["space_group_relaxed"] == group
    if stable:
        assert r["reason"] is None and r["converged"]
        assert abs(r["energy_drop_eV_atom"]) < 1e-4  # came back to the same minimum
    else:
        assert r["energy_drop_eV_atom"] > 0.01  # fell at least 10 meV/atom
        assert r["space_group_rattled"] != group
        assert r["reason"].startswith(f"space group {group} → ")
    if final is not None:
        assert r["space_group_rattled"] == final


def test_sw_beta_tin_holds_only_at_its_own_volume(sw, phases):
    cell = phases["beta_sn"]  # 4 atoms, a = 4.81 Å, c = 2.65 Å: compressed for SW
    fixed = perfect_cell_stability(cell, sw)
    assert fixed["stable"] is False and fixed["energy_drop_eV_atom"] > 0.03
    free = perfect_cell_stability(cell, sw, relax_cell=True)
    assert free["stable"] is True, free["reason"]
    assert free["space_group_rattled"] == 141
    assert 0.10 < free["volume_change_relaxed"] < 0.15  # expands by 12 %, stays β-Sn
    # a stricter volume criterion calls the same expansion a change of phase
    strict = perfect_cell_stability(cell, sw, relax_cell=True, max_volume_change=0.05)
    assert strict["stable"] is False and "volume +12 %" in strict["reason"]


def test_emt_bcc_copper_is_elastically_unstable():
    fcc = bulk("Cu", "fcc", a=3.61, cubic=True)
    for relax_cell in (False, True):
        assert perfect_cell_stability(fcc, EMT(), relax_cell=relax_cell)["stable"] is True
    bcc = bulk("Cu", "bcc", a=2.87, cubic=True).repeat(2)
    # every atom of bcc sits where its forces vanish and the positions alone are stable ...
    assert perfect_cell_stability(bcc, EMT())["stable"] is True
    # ... but the cell shears away (EMT's C11 < C12: a tetragonal strain lowers the energy)
    r = perfect_cell_stability(bcc, EMT(), relax_cell=True)
    assert r["stable"] is False and r["space_group_rattled"] != 229
    assert r["energy_drop_eV_atom"] > 0.01


def test_unstable_phase_gets_no_formation_energy(sw, phases):
    r = vacancy_formation_energy(phases["fcc"], sw)
    json.dumps(r)
    assert r["E_f_eV"] is None and r["E_vac_eV"] is None and r["steps"] == 0
    assert r["stable"] is False and r["stability"]["space_group"] == 225
    assert vacancy_flags(r) == ["unstable"]  # not also "unphysical": there is no value
    assert vacancy_flags(r, ["diamond"], "fcc") == ["unstable", "extrapolation"]
    ok = vacancy_formation_energy(phases["diamond"], sw)
    assert ok["stable"] is True and 0 < ok["E_f_eV"] < 10 and vacancy_flags(ok) == []
    # the check can be switched off: then the saddle point gets its number back
    off = vacancy_formation_energy(phases["fcc"], sw, stability_check=False)
    assert off["stability"] is None and off["stable"] is None
    assert np.isfinite(off["E_f_eV"])
    with pytest.raises(ValueError, match="unknown stability settings"):
        vacancy_formation_energy(phases["diamond"], sw, stability_check={"rattle": 0.1})


def test_cut_short_check_is_undecided_not_unstable(sw, phases):
    r = vacancy_formation_energy(phases["diamond"], sw, fmax_eV_A=1e-4, max_steps=2)
    assert r["stable"] is None and "not converged" in r["stability"]["reason"]
    assert np.isfinite(r["E_f_eV"]) and "stability unknown" in vacancy_flags(r)
    assert "unstable" not in vacancy_flags(r)


def test_vacancy_flags_for_stability():
    unstable = {"E_f_eV": None, "converged": True, "stable": False, "stability": {}}
    assert vacancy_flags(unstable) == ["unstable"]
    unknown = {"E_f_eV": 3.0, "converged": True, "stable": None, "stability": {}}
    assert vacancy_flags(unknown) == ["stability unknown"]
    unchecked = {"E_f_eV": 3.0, "converged": True, "stable": None, "stability": None}
    assert vacancy_flags(unchecked) == []
    assert vacancy_flags({"E_f_eV": None, "converged": True}) == ["unphysical"]


def test_compare_vacancies_reports_unstable_phases(sw, phases, tmp_path, monkeypatch):
    from pfd_ase.analysis import figures
    from pfd_ase.analysis.report import write_report
    from pfd_ase.analysis.validate import Subject, compare_vacancies

    drawn = []

    def recording(figsize):
        drawn.append(new_figure(figsize))
        return drawn[-1]

    new_figure = figures.new_figure
    monkeypatch.setattr(figures, "new_figure", recording)
    cells = {"diamond": phases["diamond"], "bc8": phases["bc8"]}
    subjects = {"PF": Subject(lambda: sw, {"model": "sw"}, ["diamond"])}
    out = compare_vacancies(
        cells, subjects, phases["diamond"], plot=tmp_path / "vacancies.png", title="Si"
    )
    json.dumps(out)
    assert out["vacancy_formation_eV"]["PF"]["bc8"] is None
    assert 0 < out["vacancy_formation_eV"]["PF"]["diamond"] < 10
    reason = out["vacancy_unstable"]["PF"]["bc8"]
    assert reason.startswith("perfect cell unstable under PF: space group 206 → 148")
    assert set(out["vacancy_unstable"]["PF"]) == {"bc8"}
    assert out["vacancy_flags"]["PF"] == {"diamond": [], "bc8": ["unstable", "extrapolation"]}
    # the figure: no bar but the word "unstable" where bc8's would be
    ax = drawn[-1].axes[0]
    assert [t.get_text().strip() for t in ax.texts].count("unstable") == 1
    heights = [p.get_height() for p in ax.patches]
    assert np.isnan(heights[1]) and heights[0] > 0
    # the report: "unstable" with the reason, never a number
    summary = {k: out[k] for k in ("vacancy_formation_eV", "vacancy_flags", "vacancy_unstable")}
    text = write_report(tmp_path, summary, "Si").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- vacancy E_f (PF)"))
    assert re.search(r"diamond \d\.\d\d eV, bc8 unstable \(perfect cell unstable under PF", line)
    assert "[also: extrapolation]" in line and "None" not in line
    assert "*unstable* the model's perfect cell is no stable minimum" in text


def test_stability_defaults_are_the_documented_ones():
    import inspect

    from pfd_ase.analysis.vacancy import STABILITY_CHECK

    params = inspect.signature(perfect_cell_stability).parameters
    assert {k: params[k].default for k in STABILITY_CHECK} == STABILITY_CHECK
