"""Diffusion from MD trajectories: MSD, diffusion coefficient, Arrhenius fit, conductivity.

Any ASE trajectory (a list of ``Atoms``, e.g. ``ase.io.read("md.traj", ":")``) of any model:

- :func:`unwrapped_displacements`: displacement of every atom from the first frame, unwrapped
  across periodic boundaries (each step's change of the fractional coordinates taken as the
  minimum image, so the cell may change, as under NPT), optionally less the drift of the
  centre of mass;
- :func:`mean_squared_displacement`: MSD(t) of one species, averaged over every time origin
  (by FFT) and atom, for one run or several independent runs (the per-run curves are kept);
- :func:`fit_diffusivity`: D from the linear regime, MSD = 6 D t + c, fitted over a stated
  window (default 10-50 % of the longest lag: the short lags hold the ballistic regime, the
  long ones few origins), with its standard error from the spread of independent runs, or,
  for a single run, of ``n_blocks`` consecutive blocks of it;
- :func:`arrhenius`: D(T) = D0 exp(−Ea / kB T), Ea with its standard error (pymatgen's
  :func:`pymatgen.analysis.diffusion.analyzer.fit_arrhenius`, weighted by the errors of D
  when given);
- :func:`nernst_einstein_conductivity`: σ = n q² D / kB T (pymatgen's conversion factor);
- :func:`plot_msd`, :func:`plot_arrhenius`: PNG figures;
- :func:`diffusion_study`: all of it for one model and structure: independent NVT runs at
  several temperatures (through :func:`pfd_ase.explore.explore`, so resumable and parallel),
  MSD, D(T), the Arrhenius fit and both figures.

Why not pymatgen's ``DiffusionAnalyzer`` for the MSD itself: it needs one pymatgen
``Structure`` per frame (a 3520-atom, 10⁴-frame run is 3.5·10⁷ sites), its ``smoothed="max"``
mode drops the first picosecond and gives no meaningful error bar (its documentation: the
standard deviation is meaningful only unsmoothed), and it averages no independent runs.

Units: Å, fs in, ps and Å² out; D in cm²/s (``D_cm2_s``; 1 Å²/ps = 1e-4 cm²/s); Ea in eV;
σ in mS/cm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "MAX_ALPHA_DEVIATION",
    "MIN_DIFFUSIVE_MSD_A2",
    "MSD",
    "Arrhenius",
    "DiffusionStudy",
    "Diffusivity",
    "arrhenius",
    "diffusion_study",
    "fit_diffusivity",
    "mean_squared_displacement",
    "nernst_einstein_conductivity",
    "plot_arrhenius",
    "plot_msd",
    "unwrapped_displacements",
]

#: 1 Å²/ps in cm²/s.
A2_PER_PS_IN_CM2_PER_S = 1e-4
_INSTALL = "pip install 'pfd-ase[analysis]'  (pymatgen-analysis-diffusion)"


# ----------------------------------------------------------------------------- MSD


def unwrapped_displacements(frames: Sequence[Atoms], remove_drift: bool = True) -> np.ndarray:
    """Displacement of every atom from the first frame, unwrapped (Å).

    Parameters
    ----------
    frames
        Consecutive frames of one trajectory: same atoms in the same order, periodic along
        the axes an atom may cross. Positions may be wrapped or not.
    remove_drift
        Subtract the mass-weighted centre-of-mass displacement of all atoms (a thermostat
        or numerical noise lets the whole cell drift, which is not diffusion).

    Returns
    -------
    ndarray
        Shape ``(n_frames, n_atoms, 3)``; row 0 is zero.

    Raises
    ------
    ValueError
        Fewer than two frames, or frames that differ in atoms.

    Notes
    -----
    Each step is the change of the fractional coordinates (each frame's own cell), taken as
    the minimum image along the periodic axes and turned into Å with the later frame's
    cell: no atom may move more than half a cell length between two frames (write frames
    often enough). The cell may change (NPT); the affine stretch of the positions with the
    cell is then not counted as motion.
    """
    frames = list(frames)
    if len(frames) < 2:
        raise ValueError(f"need at least two frames, got {len(frames)}")
    numbers = frames[0].numbers
    for k, atoms in enumerate(frames):
        if len(atoms) != len(numbers) or not np.array_equal(atoms.numbers, numbers):
            raise ValueError(f"frame {k} has other atoms than frame 0")
    pbc = frames[0].pbc
    steps = np.empty((len(frames) - 1, len(numbers), 3))
    if pbc.any():  # fractional coordinates, each frame in its own cell
        frac = [np.linalg.solve(a.cell.array.T, a.positions.T).T for a in frames]
    for k in range(1, len(frames)):
        if pbc.any():
            ds = frac[k] - frac[k - 1]
            ds[:, pbc] -= np.round(ds[:, pbc])  # minimum image
            steps[k - 1] = ds @ frames[k].cell.array
        else:
            steps[k - 1] = frames[k].positions - frames[k - 1].positions
    disp = np.concatenate([np.zeros((1, len(numbers), 3)), np.cumsum(steps, axis=0)])
    if remove_drift:
        masses = frames[0].get_masses()
        com = np.einsum("fai,a->fi", disp, masses) / masses.sum()
        disp -= com[:, None, :]
    return disp


def _msd_all_origins(disp: np.ndarray) -> np.ndarray:
    """MSD(lag) averaged over every origin and atom; ``disp`` (n_frames, n_atoms, 3).

    The FFT form of the windowed average (Calandrini et al., nMOLDYN):
    MSD(m) = [S1(m) − 2 S2(m)] / (N − m), with S2 the autocorrelation of the positions.
    """
    n = len(disp)
    sq = np.einsum("fai,fai->fa", disp, disp)  # |r(t)|² per frame and atom
    total = 2 * sq.sum(axis=0)
    s1 = np.empty((n, sq.shape[1]))  # S1(m) = sum over t < N - m of |r(t)|² + |r(t + m)|²
    s1[0] = total
    for m in range(1, n):
        total = total - sq[m - 1] - sq[n - m]
        s1[m] = total
    size = 2 * n
    f = np.fft.rfft(disp, n=size, axis=0)
    acf = np.fft.irfft(f * f.conj(), n=size, axis=0)[:n].sum(axis=2)  # (n, n_atoms)
    counts = (n - np.arange(n))[:, None]
    return ((s1 - 2 * acf) / counts).mean(axis=1)


@dataclass
class MSD:
    """Mean squared displacement of one species.

    Attributes
    ----------
    time_ps
        Lag times (ps), from 0.
    msd_A2
        MSD (Å²) averaged over time origins, atoms and runs (runs weighted equally).
    per_run
        Shape ``(n_runs, n_lags)``: each run's MSD.
    species
        The chemical symbol.
    n_atoms
        Atoms of that species per run.
    temperature_K
        The runs' temperature, when given.
    """

    time_ps: np.ndarray
    msd_A2: np.ndarray
    per_run: np.ndarray
    species: str
    n_atoms: int
    temperature_K: float | None = None

    @property
    def n_runs(self) -> int:
        return len(self.per_run)


def mean_squared_displacement(
    runs: Sequence[Atoms] | Sequence[Sequence[Atoms]],
    species: str,
    interval_fs: float,
    *,
    remove_drift: bool = True,
    max_lag_fraction: float = 0.5,
    temperature_K: float | None = None,
) -> MSD:
    """MSD(t) of ``species``, averaged over time origins, atoms and independent runs.

    Parameters
    ----------
    runs
        One trajectory (a sequence of ``Atoms``) or several independent ones of the same
        length and time between frames (e.g. different seeds at one temperature).
    species
        Chemical symbol of the diffusing atoms, e.g. ``"Li"``.
    interval_fs
        Time between consecutive frames (fs): MD time step × sampling interval.
    remove_drift
        See :func:`unwrapped_displacements`.
    max_lag_fraction
        Longest lag kept, as a fraction of the run length (fewer origins beyond it).
    temperature_K
        Recorded on the result (for :func:`arrhenius`).

    Raises
    ------
    ValueError
        No atom of ``species``, runs of different lengths, a bad interval or fraction.
    """
    if not interval_fs > 0:
        raise ValueError(f"interval_fs must be positive, got {interval_fs}")
    if not 0 < max_lag_fraction <= 1:
        raise ValueError(f"max_lag_fraction must be in (0, 1], got {max_lag_fraction}")
    runs = [list(runs)] if runs and isinstance(runs[0], Atoms) else [list(r) for r in runs]
    if not runs or not runs[0]:
        raise ValueError("no frames")
    lengths = {len(r) for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"runs must have the same number of frames, got {sorted(lengths)}")
    mask = np.array(runs[0][0].get_chemical_symbols()) == species
    if not mask.any():
        raise ValueError(f"no {species} atoms in the trajectory")
    n_lags = max(2, int(round(max_lag_fraction * (lengths.pop() - 1))) + 1)
    curves = []
    for run in runs:
        disp = unwrapped_displacements(run, remove_drift=remove_drift)
        curves.append(_msd_all_origins(disp[:, mask])[:n_lags])
    per_run = np.array(curves)
    time_ps = np.arange(n_lags) * interval_fs / 1000.0
    return MSD(time_ps, per_run.mean(axis=0), per_run, species, int(mask.sum()), temperature_K)


# ----------------------------------------------------------------------------- D


@dataclass
class Diffusivity:
    """D from MSD = 6 D t + c over ``window_ps``.

    Attributes
    ----------
    D_cm2_s, D_err_cm2_s
        Diffusion coefficient and its standard error (cm²/s); the error is ``nan`` when it
        cannot be estimated (one run, one block).
    D_A2_ps
        The same in Å²/ps.
    window_ps
        Lag window of the fit.
    intercept_A2
        The fit's intercept (the ballistic/vibrational offset).
    samples_cm2_s
        The per-run (or per-block) values behind the error.
    error_from
        ``"runs"``, ``"blocks"``, or why there is no error.
    temperature_K
        From the MSD, when known.
    alpha
        The exponent of MSD ∝ t^α over the window (log-log fit): 1 when diffusive, 2 when
        ballistic, below 1 when caged.
    msd_end_A2
        The MSD at the window's end (Å²).
    """

    D_cm2_s: float
    D_err_cm2_s: float
    window_ps: tuple[float, float]
    intercept_A2: float
    samples_cm2_s: list[float] = field(default_factory=list)
    error_from: str = "runs"
    temperature_K: float | None = None
    alpha: float = float("nan")
    msd_end_A2: float = float("nan")

    @property
    def diffusive(self) -> bool:
        """Whether the window looks diffusive: |α − 1| ≤ :data:`MAX_ALPHA_DEVIATION` and the
        MSD reaches :data:`MIN_DIFFUSIVE_MSD_A2` (past vibrations about a site: a jump or
        more). Otherwise D is not a diffusion coefficient (too short a run, or no hops)."""
        return bool(
            abs(self.alpha - 1.0) <= MAX_ALPHA_DEVIATION and self.msd_end_A2 >= MIN_DIFFUSIVE_MSD_A2
        )

    @property
    def D_A2_ps(self) -> float:
        return self.D_cm2_s / A2_PER_PS_IN_CM2_PER_S


#: Largest |α − 1| of a window called diffusive (MSD ∝ t^α).
MAX_ALPHA_DEVIATION = 0.25
#: Smallest MSD (Å²) at the window's end for a window called diffusive: 2 Å root mean
#: square, beyond vibrations (≈ 0.1-0.5 Å) and about a Li site spacing in oxides.
MIN_DIFFUSIVE_MSD_A2 = 4.0


def _in_window(t: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The lags inside the fit window (fractions of the longest lag)."""
    return (t >= window[0] * t[-1]) & (t <= window[1] * t[-1])


def _alpha(t: np.ndarray, msd: np.ndarray, window: tuple[float, float]) -> tuple[float, float]:
    """α of MSD ∝ t^α over the window (nan if undefined) and the MSD at its end."""
    sel = _in_window(t, window) & (t > 0) & (msd > 0)
    end = float(msd[(t <= window[1] * t[-1])][-1])
    if sel.sum() < 2:
        return float("nan"), end
    return float(np.polyfit(np.log(t[sel]), np.log(msd[sel]), 1)[0]), end


def _slope(t: np.ndarray, msd: np.ndarray, window: tuple[float, float]) -> tuple[float, float]:
    sel = _in_window(t, window)
    if sel.sum() < 2:
        raise ValueError(f"the fit window {window} holds fewer than two lags")
    slope, intercept = np.polyfit(t[sel], msd[sel], 1)
    return float(slope), float(intercept)


def fit_diffusivity(
    msd: MSD,
    window: tuple[float, float] = (0.1, 0.5),
    *,
    runs: Sequence[Atoms] | Sequence[Sequence[Atoms]] | None = None,
    interval_fs: float | None = None,
    n_blocks: int = 4,
) -> Diffusivity:
    """D from the linear regime of the MSD, with its standard error.

    Parameters
    ----------
    msd
        From :func:`mean_squared_displacement`.
    window
        Fit window as fractions of the longest lag of ``msd`` (default 10 % to 50 %).
    runs, interval_fs
        For a single run only: the trajectory again, cut into ``n_blocks`` consecutive
        blocks whose MSDs (same rules) give the error; without them, or when a block is too
        short for the window, a single run's error is ``nan``.
    n_blocks
        Blocks of a single run (>= 2).

    Returns
    -------
    Diffusivity
        D is the fit of the run-averaged MSD; the error is the standard error of the mean of
        the per-run fits (several runs) or of the per-block fits (one run).
    """
    if not 0 <= window[0] < window[1] <= 1:
        raise ValueError(f"window must satisfy 0 <= start < end <= 1, got {window}")
    slope, intercept = _slope(msd.time_ps, msd.msd_A2, window)
    to_cm2 = A2_PER_PS_IN_CM2_PER_S / 6.0
    samples: list[float] = []
    source = "runs"
    if msd.n_runs > 1:
        samples = [_slope(msd.time_ps, curve, window)[0] * to_cm2 for curve in msd.per_run]
    elif runs is not None:
        if interval_fs is None:
            raise ValueError("interval_fs is needed with runs")
        if n_blocks < 2:
            raise ValueError(f"n_blocks must be >= 2, got {n_blocks}")
        run = list(runs) if runs and isinstance(runs[0], Atoms) else list(runs[0])
        size = len(run) // n_blocks
        fraction = (len(msd.time_ps) - 1) / (len(run) - 1)
        blocks = [run[b * size : (b + 1) * size] for b in range(n_blocks)]
        source = "blocks"
        try:
            for block in blocks:
                m = mean_squared_displacement(
                    block, msd.species, interval_fs, max_lag_fraction=min(1.0, fraction)
                )
                samples.append(_slope(m.time_ps, m.msd_A2, window)[0] * to_cm2)
        except ValueError:  # blocks too short for the window: no error bar, said so
            samples, source = [], "none: the run is too short for blocks"
    err = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else np.nan
    t_max = float(msd.time_ps[-1])
    alpha, msd_end = _alpha(msd.time_ps, msd.msd_A2, window)
    return Diffusivity(
        alpha=alpha,
        msd_end_A2=msd_end,
        D_cm2_s=slope * to_cm2,
        D_err_cm2_s=err,
        window_ps=(window[0] * t_max, window[1] * t_max),
        intercept_A2=intercept,
        samples_cm2_s=samples,
        error_from=source,
        temperature_K=msd.temperature_K,
    )


# ----------------------------------------------------------------------------- Arrhenius


@dataclass
class Arrhenius:
    """D(T) = D0 exp(−Ea / kB T).

    Attributes
    ----------
    Ea_eV, Ea_err_eV
        Activation energy and its standard error (eV).
    D0_cm2_s
        Prefactor (cm²/s).
    temperatures_K, D_cm2_s, D_err_cm2_s
        The data fitted.
    """

    Ea_eV: float
    Ea_err_eV: float
    D0_cm2_s: float
    temperatures_K: list[float]
    D_cm2_s: list[float]
    D_err_cm2_s: list[float] | None = None

    def D_at(self, temperature_K: float) -> float:
        """The fitted D at ``temperature_K`` (cm²/s), e.g. room temperature."""
        from ase.units import kB

        return float(self.D0_cm2_s * np.exp(-self.Ea_eV / (kB * temperature_K)))


def _pymatgen_diffusion() -> Any:
    try:
        from pymatgen.analysis.diffusion import analyzer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the Arrhenius fit needs pymatgen-analysis-diffusion: {_INSTALL}"
        ) from exc
    return analyzer


def arrhenius(
    temperatures_K: Sequence[float],
    diffusivities: Sequence[float | Diffusivity],
    errors_cm2_s: Sequence[float] | None = None,
) -> Arrhenius:
    """Fit D = D0 exp(−Ea / kB T) to D at several temperatures.

    Parameters
    ----------
    temperatures_K
        At least two distinct temperatures (three for a standard error).
    diffusivities
        D (cm²/s, positive) at each temperature, or :class:`Diffusivity` results (their
        errors are then used unless ``errors_cm2_s`` is given).
    errors_cm2_s
        Standard errors of D: the fit of ln D against 1/T is then weighted by
        (D / σ_D)².

    Returns
    -------
    Arrhenius
        Ea ± its standard error, and D0. Unweighted, Ea and its error are pymatgen's
        ``fit_arrhenius``; weighted, the same least squares with weights (pymatgen's
        weighted mode fits D, not ln D).
    """
    temps = np.asarray(temperatures_K, dtype=float)
    if any(isinstance(d, Diffusivity) for d in diffusivities):
        if errors_cm2_s is None and all(np.isfinite(d.D_err_cm2_s) for d in diffusivities):
            errors_cm2_s = [d.D_err_cm2_s for d in diffusivities]
        diffusivities = [d.D_cm2_s if isinstance(d, Diffusivity) else d for d in diffusivities]
    d = np.asarray(diffusivities, dtype=float)
    if temps.shape != d.shape or len(temps) < 2 or len(set(temps)) < 2:
        raise ValueError("need D at two or more distinct temperatures, one D per temperature")
    if (d <= 0).any() or (temps <= 0).any():
        raise ValueError("temperatures and diffusivities must be positive")
    from ase.units import kB

    errs = None if errors_cm2_s is None else np.asarray(errors_cm2_s, dtype=float)
    if errs is None:
        ea, c, sem = _pymatgen_diffusion().fit_arrhenius(temps, d)
        sem = np.nan if sem is None else float(sem)
        return Arrhenius(float(ea), sem, float(c), temps.tolist(), d.tolist(), None)
    if errs.shape != d.shape or (errs <= 0).any():
        raise ValueError("errors_cm2_s must be positive, one per temperature")
    x, y = 1.0 / temps, np.log(d)
    w = (d / errs) ** 2  # 1 / var(ln D)
    a = np.vstack([x, np.ones_like(x)]).T
    cov = np.linalg.inv(a.T @ (a * w[:, None]))
    slope, intercept = cov @ (a.T @ (w * y))
    if len(temps) > 2:  # scale by the reduced chi² (as an unweighted fit would)
        chi2 = float(np.sum(w * (y - slope * x - intercept) ** 2)) / (len(temps) - 2)
        cov = cov * max(chi2, 1.0)
        ea_err = float(np.sqrt(cov[0, 0]) * kB)
    else:
        ea_err = np.nan
    return Arrhenius(
        float(-slope * kB),
        ea_err,
        float(np.exp(intercept)),
        temps.tolist(),
        d.tolist(),
        errs.tolist(),
    )


def nernst_einstein_conductivity(
    atoms: Atoms, species: str, D_cm2_s: float, temperature_K: float
) -> float:
    """Ionic conductivity σ = n q² D / (kB T) of ``species`` in ``atoms`` (mS/cm).

    The oxidation state comes from pymatgen's guess for the composition (e.g. Li⁺); the
    Haven ratio is taken as 1 (no correlation between the ions' jumps).
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    if species not in atoms.get_chemical_symbols():
        raise ValueError(f"no {species} atoms in the structure")
    structure = AseAtomsAdaptor.get_structure(atoms)
    structure.add_oxidation_state_by_guess()
    specie = next(s for s in structure.types_of_species if s.symbol == species)
    factor = _pymatgen_diffusion().get_conversion_factor(structure, specie, temperature_K)
    return float(factor * D_cm2_s)


# ----------------------------------------------------------------------------- plots


def plot_msd(
    msds: Sequence[MSD],
    path: str | os.PathLike,
    fits: Sequence[Diffusivity] | None = None,
) -> Path:
    """MSD(t) of each temperature (runs averaged, the runs' spread shaded), fits dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, m in enumerate(msds):
        label = f"{m.temperature_K:g} K" if m.temperature_K else f"set {k}"
        (line,) = ax.plot(m.time_ps, m.msd_A2, label=f"{label} ({m.n_runs} runs)")
        if m.n_runs > 1:
            lo, hi = m.per_run.min(axis=0), m.per_run.max(axis=0)
            ax.fill_between(m.time_ps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        if fits is not None:
            f = fits[k]
            t = np.linspace(*f.window_ps, 20)
            ax.plot(t, 6 * f.D_A2_ps * t + f.intercept_A2, "--", color=line.get_color())
    ax.set(xlabel="t (ps)", ylabel=f"MSD of {msds[0].species} (Å²)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_arrhenius(
    fits: Sequence[Arrhenius], labels: Sequence[str], path: str | os.PathLike
) -> Path:
    """log D against 1000/T with each fit's line and its Ea ± error in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for fit, label in zip(fits, labels, strict=True):
        t = np.asarray(fit.temperatures_K)
        yerr = None if fit.D_err_cm2_s is None else fit.D_err_cm2_s
        ax.errorbar(1000 / t, fit.D_cm2_s, yerr=yerr, fmt="o", capsize=3, label=None)
        grid = np.linspace(t.min(), t.max(), 50)
        ax.plot(
            1000 / grid,
            [fit.D_at(x) for x in grid],
            label=f"{label}: Ea = {fit.Ea_eV:.3f} ± {fit.Ea_err_eV:.3f} eV",
        )
    ax.set(yscale="log", xlabel="1000 / T (1/K)", ylabel="D (cm²/s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- study


@dataclass
class DiffusionStudy:
    """D(T) of one species under one model: see :func:`diffusion_study`.

    Attributes
    ----------
    species
        The diffusing species.
    msd, fits
        Temperature (K) → :class:`MSD` and :class:`Diffusivity`.
    arrhenius
        The fit over the temperatures (``None`` with fewer than two, or a D <= 0).
    excluded
        Runs left out, each ``{"walker", "temperature_K", "status", "n_frames",
        "expected"}``: a run that blew up, failed or lost frames to the frame filter
        cannot give an unbroken trajectory.
    plots
        Paths of the figures written.
    """

    species: str
    msd: dict[float, MSD]
    fits: dict[float, Diffusivity]
    arrhenius: Arrhenius | None
    excluded: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-safe figures: D ± error per temperature, runs, Ea ± error, D0."""
        out: dict[str, Any] = {
            "species": self.species,
            "D_cm2_s": {
                f"{t:g}": {
                    "D": f.D_cm2_s,
                    "err": None if not np.isfinite(f.D_err_cm2_s) else f.D_err_cm2_s,
                    "runs": self.msd[t].n_runs,
                    "window_ps": list(f.window_ps),
                    "alpha": f.alpha,
                    "msd_end_A2": f.msd_end_A2,
                    "diffusive": f.diffusive,
                }
                for t, f in self.fits.items()
            },
            "excluded_runs": self.excluded,
            "plots": self.plots,
        }
        if self.arrhenius is not None:
            a = self.arrhenius
            err = None if not np.isfinite(a.Ea_err_eV) else a.Ea_err_eV
            out["arrhenius"] = {
                "Ea_eV": a.Ea_eV,
                "Ea_err_eV": err,
                "D0_cm2_s": a.D0_cm2_s,
                # an Ea of diffusion only when every D of the fit is one
                "diffusive": all(f.diffusive for f in self.fits.values()),
            }
        return out


def diffusion_study(
    model: Any,
    structure: Atoms,
    species: str,
    temperatures_K: Sequence[float],
    workdir: str | os.PathLike,
    *,
    n_runs: int = 4,
    steps: int = 2000,
    timestep_fs: float = 1.0,
    sample_every: int = 10,
    equilibration_steps: int = 0,
    seed: int = 0,
    thermostat: str = "bussi",
    window: tuple[float, float] = (0.1, 0.5),
    executor: Any = None,
    progress: bool = False,
    label: str | None = None,
) -> DiffusionStudy:
    """Independent NVT runs at each temperature, their MSD, D(T) and the Arrhenius fit.

    Parameters
    ----------
    model
        The MD model, as :func:`pfd_ase.explore.explore` takes it (a labeler name, ``("pfd",
        {"model": path})``, a calculator factory ...).
    structure
        The starting cell (every run starts from it, with its own random velocities).
    species
        The diffusing species, e.g. ``"Li"``.
    temperatures_K
        Temperatures of the runs (K).
    workdir
        Run folder (walker folders; rerunning reuses finished runs) and figures
        (``msd.png``, ``arrhenius.png``).
    n_runs
        Independent runs per temperature (their spread gives the error of D).
    steps, timestep_fs, sample_every
        MD steps per run, time step (fs), a frame every this many steps (the MSD's time
        resolution; the first frame is the start).
    equilibration_steps
        Steps at the start of each run left out of the MSD (a multiple of
        ``sample_every``): the runs start from ``structure`` with Maxwell-Boltzmann
        velocities, and until the thermostat has brought the kinetic and potential energy
        into balance the atoms' drift is not diffusion.
    seed
        Seed of the runs' velocities and thermostat noise.
    thermostat
        ``"bussi"`` (stochastic velocity rescaling: canonical, and the least disturbing of
        the dynamics among the walkers' thermostats), ``"nose-hoover"``, ``"langevin"``.
    window
        The fit window of :func:`fit_diffusivity`.
    executor, progress
        As in :func:`~pfd_ase.explore.explore`.
    label
        Names the model in the figures.

    Returns
    -------
    DiffusionStudy
    """
    from pfd_ase.explore import explore

    if n_runs < 1:
        raise ValueError(f"n_runs must be positive, got {n_runs}")
    if equilibration_steps % sample_every or not 0 <= equilibration_steps < steps:
        raise ValueError(
            f"equilibration_steps ({equilibration_steps}) must be a multiple of sample_every "
            f"({sample_every}) in [0, steps)"
        )
    if species not in structure.get_chemical_symbols():
        raise ValueError(f"no {species} atoms in the structure")
    workdir = Path(workdir)
    result = explore(
        [structure] * n_runs,
        model,
        workdir,
        temperatures_K=list(temperatures_K),
        pressures_GPa=[None],
        steps=steps,
        timestep_fs=timestep_fs,
        sample_every=sample_every,
        thermostat=thermostat,
        seed=seed,
        include_initial=True,
        executor=executor,
        progress=progress,
    )
    expected = (steps - equilibration_steps) // sample_every + 1
    by_walker: dict[int, list[Atoms]] = {}
    for frame in result.frames:
        if int(frame.info["pfd_step"]) >= equilibration_steps:
            by_walker.setdefault(int(frame.info["pfd_walker"]), []).append(frame)
    runs: dict[float, list[list[Atoms]]] = {}
    excluded = []
    for record in result.walkers:
        frames = by_walker.get(record["index"], [])
        temp = float(record["temperature_K"])
        if record["status"] != "finished" or len(frames) != expected:
            excluded.append(
                {
                    "walker": record["index"],
                    "temperature_K": temp,
                    "status": record["status"],
                    "n_frames": len(frames),
                    "expected": expected,
                }
            )
            continue
        runs.setdefault(temp, []).append(frames)
    interval = timestep_fs * sample_every
    msds, fits = {}, {}
    for temp in sorted(runs):
        m = mean_squared_displacement(runs[temp], species, interval, temperature_K=temp)
        msds[temp] = m
        single = runs[temp][0] if m.n_runs == 1 else None
        fits[temp] = fit_diffusivity(m, window, runs=single, interval_fs=interval)
    fit = None
    positive = {t: f for t, f in fits.items() if f.D_cm2_s > 0}
    if len(positive) >= 2:
        fit = arrhenius(list(positive), list(positive.values()))
    plots = []
    if msds:
        plots.append(str(plot_msd(list(msds.values()), workdir / "msd.png", list(fits.values()))))
    if fit is not None:
        plots.append(str(plot_arrhenius([fit], [label or "model"], workdir / "arrhenius.png")))
    return DiffusionStudy(species, msds, fits, fit, excluded, plots)
