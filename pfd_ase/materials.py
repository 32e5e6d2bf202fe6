"""Phase data of the materials the recipes and benchmarks use: structures by name and size.

Silicon (the PFD supplement's Si study, Table S1): :data:`SILICON_LATTICE` holds the lattice
parameters, :func:`silicon_phases` the conventional cells of the seven crystal phases and
:func:`silicon` any of them, or diamond with a vacancy, repeated to a given size.
:data:`SILICON_VACANCY_SUPERCELLS` gives the supercells of the paper's vacancy calculations.
:func:`labelled_silicon` makes seeded, perturbed diamond cells labelled by Stillinger-Weber
(or any labeler): the small data sets of the tests and benchmarks.

LATP (the supplement's solid electrolyte): :func:`nasicon_ltp` builds LiTi₂(PO₄)₃ (NASICON,
R-3c) from its Wyckoff positions (:data:`LTP_WYCKOFF`), :func:`latp` Li₁₊ₓAlₓTi₂₋ₓ(PO₄)₃ by
seeded Al-on-Ti substitution with the charge-compensating Li on the empty M2 sites.

BaTiO₃ (the supplement's perovskites): :func:`batio3` builds the cubic, tetragonal,
orthorhombic and rhombohedral phases from their experimental Wyckoff positions
(:data:`BATIO3_PHASES`), :func:`doped_perovskite` the doped
Ba₀.₅Na₀.₂₅Bi₀.₂₅Ti₀.₈₇₅Zr₀.₁₂₅O₃ by seeded random substitution.

Carbon: :func:`amorphous_carbon` packs random atoms at a given density with a minimum
distance, the start of a melt-quench.

Units: Å.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "BATIO3_PHASES",
    "DOPED_PEROVSKITE",
    "LTP_CELL",
    "LTP_WYCKOFF",
    "SILICON_LATTICE",
    "SILICON_PHASES",
    "SILICON_STRUCTURES",
    "SILICON_VACANCY_SUPERCELLS",
    "amorphous_carbon",
    "batio3",
    "doped_perovskite",
    "labelled_silicon",
    "latp",
    "nasicon_ltp",
    "silicon",
    "silicon_phases",
    "supercell",
]

#: Lattice parameters (Å; near experiment / PBE at zero pressure; diamond at the
#: Stillinger-Weber minimum 5.431 Å; ``x`` is BC8's internal coordinate).
SILICON_LATTICE: dict[str, dict[str, float]] = {
    "diamond": {"a": 5.431},
    "hex_diamond": {"a": 3.84, "c": 6.34},
    "fcc": {"a": 3.87},
    "bcc": {"a": 3.08},
    "hcp": {"a": 2.73, "c": 4.50},
    "beta_sn": {"a": 4.81, "c": 2.65},
    "bc8": {"a": 6.64, "x": 0.1003},
}

#: The crystal phases, in the order of :func:`silicon_phases`.
SILICON_PHASES: tuple[str, ...] = tuple(SILICON_LATTICE)

#: Every name :func:`silicon` builds: the phases and ``diamond_vacancy``.
SILICON_STRUCTURES: tuple[str, ...] = (*SILICON_PHASES, "diamond_vacancy")

#: Supercell of each phase's conventional cell (a 3×3 matrix or repeats) for vacancy
#: calculations: ``"full"`` with the paper's atom counts (diamond 32, BC8 128, β-Sn 64,
#: FCC 108, hex-diamond 108, HCP 64; BCC 54, not in the paper), ``"quick"`` with 8–32 atoms.
SILICON_VACANCY_SUPERCELLS: dict[str, dict[str, Any]] = {
    "full": {
        # 32 atoms: the body-centred-cubic shaped supercell of the 8-atom cube (4 cubes)
        "diamond": [[-1, 1, 1], [1, -1, 1], [1, 1, -1]],
        "bc8": (2, 2, 2),
        "beta_sn": (2, 2, 4),
        "fcc": (3, 3, 3),
        "hex_diamond": (3, 3, 3),
        "hcp": (4, 4, 2),
        "bcc": (3, 3, 3),
    },
    "quick": {
        "diamond": (1, 1, 1),
        "bc8": (1, 1, 1),
        "beta_sn": (1, 1, 4),
        "fcc": (2, 2, 2),
        "hex_diamond": (2, 2, 1),
        "hcp": (2, 2, 2),
        "bcc": (2, 2, 2),
    },
}


def _conventional_cell(name: str) -> Atoms:
    from ase.build import bulk
    from ase.spacegroup import crystal

    lat = SILICON_LATTICE[name]
    if name in ("diamond", "fcc", "bcc"):
        atoms = bulk("Si", name, a=lat["a"], cubic=True)
    elif name == "hcp":
        atoms = bulk("Si", "hcp", a=lat["a"], c=lat["c"])
    elif name == "hex_diamond":
        cellpar = [lat["a"]] * 2 + [lat["c"], 90, 90, 120]
        atoms = crystal("Si", [(1 / 3, 2 / 3, 1 / 16)], spacegroup=194, cellpar=cellpar)
    elif name == "beta_sn":
        cellpar = [lat["a"]] * 2 + [lat["c"], 90, 90, 90]
        atoms = crystal("Si", [(0.0, 0.0, 0.0)], spacegroup=141, cellpar=cellpar)
    else:  # bc8
        cellpar = [lat["a"]] * 3 + [90, 90, 90]
        atoms = crystal("Si", [(lat["x"],) * 3], spacegroup=206, cellpar=cellpar)
    # a plain Atoms: no spacegroup info or other builder metadata
    return Atoms(
        atoms.get_chemical_symbols(),
        cell=atoms.cell,
        scaled_positions=atoms.get_scaled_positions(),
        pbc=True,
    )


def silicon_phases(names: Iterable[str] | None = None) -> dict[str, Atoms]:
    """The Si phases of the PFD silicon study as conventional cells.

    Parameters
    ----------
    names
        Phases to build (default: all of :data:`SILICON_PHASES`, in that order).

    Returns
    -------
    dict
        ``diamond`` (8 atoms, Fd-3m, 227), ``hex_diamond`` (lonsdaleite, 4 atoms,
        P6₃/mmc, 194), ``fcc`` (4 atoms, 225), ``bcc`` (2 atoms, 229), ``hcp`` (2 atoms,
        194), ``beta_sn`` (4 atoms, I4₁/amd, 141), ``bc8`` (16 atoms, Ia-3, 206), with the
        lattice parameters of :data:`SILICON_LATTICE`.
    """
    names = SILICON_PHASES if names is None else tuple(names)
    unknown = [n for n in names if n not in SILICON_LATTICE]
    if unknown:
        raise ValueError(f"unknown Si phases {unknown}; known: {list(SILICON_PHASES)}")
    return {name: _conventional_cell(name) for name in names}


def supercell(atoms: Atoms, size: int | Sequence[int] | Sequence[Sequence[int]] = 1) -> Atoms:
    """A supercell of ``atoms`` (never modified): ``n`` (n×n×n), three repeats or a 3×3 matrix.

    Returns
    -------
    Atoms
        A new object without a calculator.
    """
    from ase.build import make_supercell

    spec = np.asarray(size, dtype=int)
    if spec.shape == ():
        spec = np.full(3, int(spec))
    if spec.shape == (3,):
        if np.any(spec < 1):
            raise ValueError(f"repeats must be positive, got {size}")
        out = atoms.repeat(tuple(int(n) for n in spec))
    elif spec.shape == (3, 3):
        out = make_supercell(atoms, spec)
    else:
        raise ValueError(f"size must be an integer, three repeats or a 3×3 matrix, got {size}")
    out.calc = None
    return out


def silicon(
    name: str,
    size: int | Sequence[int] | Sequence[Sequence[int]] = 1,
    primitive: bool = False,
) -> Atoms:
    """One Si structure by name: a phase of :func:`silicon_phases`, or ``diamond_vacancy``.

    Parameters
    ----------
    name
        One of :data:`SILICON_STRUCTURES`.
    size
        Supercell of the conventional cell (see :func:`supercell`), or of the primitive
        cell with ``primitive``. ``diamond_vacancy`` is the diamond supercell of that size
        with its first atom removed (7 atoms at size 1, 63 at size 2).
    primitive
        Start from the primitive cell (:func:`ase.build.bulk`'s, e.g. 2 atoms for diamond);
        for ``diamond``, ``fcc`` and ``bcc`` (the other phases' cells differ from the
        conventional ones only by centring, not built here).

    Returns
    -------
    Atoms
        Periodic, without a calculator.
    """
    if name not in SILICON_STRUCTURES:
        raise ValueError(f"unknown Si structure {name!r}; known: {list(SILICON_STRUCTURES)}")
    if primitive:
        from ase.build import bulk

        if name not in ("diamond", "fcc", "bcc"):
            raise ValueError(f"no primitive cell built for {name!r}: diamond, fcc or bcc")
        return supercell(bulk("Si", name, a=SILICON_LATTICE[name]["a"]), size)
    if name == "diamond_vacancy":
        atoms = supercell(_conventional_cell("diamond"), size)
        del atoms[0]
        return atoms
    return supercell(_conventional_cell(name), size)


def labelled_silicon(
    n: int,
    seed: int,
    labeler: Any = "sw",
    *,
    size: int | Sequence[int] = 1,
    a: float = 5.43,
    strain: float = 0.01,
    displacement_A: float = 0.08,
) -> list[Atoms]:
    """``n`` randomly strained and rattled diamond Si cells, labelled (energy, forces, stress).

    The tests' and benchmarks' small data sets, Stillinger-Weber-labelled by default.

    Parameters
    ----------
    n
        Number of frames.
    seed
        Seed of ``np.random.default_rng``; per frame it draws the 3×3 strain, then the
        displacements. The same arguments give the same frames, bit for bit.
    labeler
        A labeler name (:func:`~pfd_ase.calculators.make_labeler`: ``"sw"``, ``"tersoff"``
        ...), a ``(name, overrides)`` pair or a calculator object; one calculator labels all
        frames (:func:`pfd_ase.label.label_in_memory`).
    size
        Repeats of the 8-atom conventional cube: ``k`` along each axis (8·k³ atoms) or three
        repeats.
    a
        Lattice parameter, Å (5.43: 0.02 % below Stillinger-Weber's minimum, 5.431).
    strain
        Standard deviation of each component of the strain ε; the cell becomes
        ``cell @ (I + ε)``, atoms scaled with it. ε is not symmetrised (unlike
        :func:`pfd_ase.structures.perturb`), so it also turns the cell slightly.
    displacement_A
        Standard deviation of the Gaussian displacement of each Cartesian coordinate, Å.

    Returns
    -------
    list of Atoms
        Labelled frames (:func:`~pfd_ase.label.label_in_memory`: a
        ``SinglePointCalculator`` and the labeler's record in ``info``).
    """
    from ase.build import bulk

    from pfd_ase.label import label_in_memory

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Si", "diamond", a=a, cubic=True).repeat(size)
        atoms.set_cell(
            atoms.cell.array @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True
        )
        atoms.positions += rng.normal(0.0, displacement_A, atoms.positions.shape)
        frames.append(atoms)
    return label_in_memory(frames, labeler)


# ----------------------------------------------------------------------------- LATP

#: Hexagonal cell of LiTi₂(PO₄)₃ (R-3c, No. 167; Å), near the room-temperature diffraction
#: values of the literature (a 8.51, c 20.84).
LTP_CELL: dict[str, float] = {"a": 8.511, "c": 20.843}
#: Wyckoff positions of LiTi₂(PO₄)₃ in the hexagonal setting. Source: the experimental
#: lattice above with internal coordinates relaxed at that lattice by SevenNet-0 (a
#: PBE-trained universal model) under R-3c (ASE ``FixSymmetry``, fmax 0.005 eV/Å), starting
#: from rounded literature values (Ti z 0.1418, P x 0.2886, O1 (0.1869, −0.0087, 0.1929),
#: O2 (0.1909, 0.1641, 0.0810); not one verified CIF), which left P–O at 1.45 Å and forces
#: up to 4.3 eV/Å. Relaxed: Li–O 2.21 Å (×6), Ti–O 1.90/1.98 Å, P–O 1.54 Å; SevenNet-0's
#: remaining stress −4.3/−2.4 GPa (it would expand the cell, as PBE does). Recipes relax
#: with their own labeler first. ``M2`` is the empty 18e site (x, 0, ¼), x = 0.64, where the
#: extra Li of LATP goes.
LTP_WYCKOFF: dict[str, tuple[str, tuple[float, float, float]]] = {
    "Li": ("Li", (0.0, 0.0, 0.0)),  # M1, 6b
    "Ti": ("Ti", (0.0, 0.0, 0.1399)),  # 12c
    "P": ("P", (0.2904, 0.0, 0.25)),  # 18e
    "O1": ("O", (0.1885, 0.0023, 0.1894)),  # 36f
    "O2": ("O", (0.1871, 0.1634, 0.0779)),  # 36f
}
_M2 = (0.64, 0.0, 0.25)  # 18e, empty in LiTi2(PO4)3


def _ltp_crystal(sites: dict[str, tuple[str, tuple[float, float, float]]]) -> Atoms:
    from ase.spacegroup import crystal

    cellpar = [LTP_CELL["a"], LTP_CELL["a"], LTP_CELL["c"], 90, 90, 120]
    symbols = [symbol for symbol, _ in sites.values()]
    atoms = crystal(symbols, [xyz for _, xyz in sites.values()], spacegroup=167, cellpar=cellpar)
    return Atoms(
        atoms.get_chemical_symbols(),
        cell=atoms.cell,
        scaled_positions=atoms.get_scaled_positions(),
        pbc=True,
    )


def nasicon_ltp(primitive: bool = False) -> Atoms:
    """LiTi₂(PO₄)₃ (NASICON, R-3c): the 108-atom hexagonal cell (Z = 6), or with
    ``primitive`` the 36-atom rhombohedral primitive cell (Z = 2)."""
    atoms = _ltp_crystal(LTP_WYCKOFF)
    if not primitive:
        return atoms
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    lattice, scaled, numbers = spglib.standardize_cell(cell, to_primitive=True, symprec=1e-4)
    return Atoms(numbers=numbers, cell=lattice, scaled_positions=scaled, pbc=True)


def latp(
    x: float,
    size: int | Sequence[int] = 1,
    seed: int = 0,
) -> Atoms:
    """Li₁₊ₓAlₓTi₂₋ₓ(PO₄)₃ in ``size`` repeats of the hexagonal LiTi₂(PO₄)₃ cell.

    ``n = round(x · N_fu)`` Ti atoms (``N_fu`` formula units: 6 per hexagonal cell) become
    Al, and ``n`` Li fill empty M2 sites (18e) for charge balance, both drawn at random
    (``np.random.default_rng(seed)``): each seed is another ordering. ``x = 1/3`` in one
    cell is the supplement's 110-atom Li₈Al₂Ti₁₀(PO₄)₁₈ (its x = 0.3); in 2×2×1 cells, 440.

    Parameters
    ----------
    x
        Al per formula unit, 0 <= x <= 2; it must be reachable in the cell within less than
        half a substitution (``|n / N_fu − x| < 1 / (2 N_fu)``).
    size
        Repeats of the hexagonal cell (k, or three integers).
    seed
        Seed of the ordering.

    Returns
    -------
    Atoms
        ``info["latp_x"]``: the realised x; ``info["latp_seed"]``: the seed.

    Raises
    ------
    ValueError
        x outside [0, 2] or not reachable in the cell.
    """
    if not 0 <= x <= 2:
        raise ValueError(f"x must be in [0, 2], got {x}")
    sites = dict(LTP_WYCKOFF, M2=("X", _M2))  # X: placeholder for the empty M2 sites
    atoms = supercell(_ltp_crystal(sites), size)
    n_fu = int(np.sum(atoms.numbers == 22)) // 2
    n = int(round(x * n_fu))
    if abs(n / n_fu - x) >= 0.5 / n_fu - 1e-12:  # half-way between two counts: ambiguous
        raise ValueError(f"x = {x} is not reachable with {n_fu} formula units (nearest {n / n_fu})")
    rng = np.random.default_rng(seed)
    ti = np.flatnonzero(atoms.numbers == 22)
    m2 = np.flatnonzero(atoms.numbers == 0)
    symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
    symbols[rng.choice(ti, n, replace=False)] = "Al"
    symbols[rng.choice(m2, n, replace=False)] = "Li"
    keep = symbols != "X"
    out = Atoms(list(symbols[keep]), positions=atoms.positions[keep], cell=atoms.cell, pbc=True)
    out.info.update(latp_x=n / n_fu, latp_seed=int(seed))
    return out


#: BaTiO₃, the four phases (space group, cell parameters in Å and degrees, Wyckoff sites):
#: neutron powder diffraction of G. H. Kwei, A. C. Lawson, S. J. L. Billinge and S.-W.
#: Cheong, J. Phys. Chem. 97, 2368 (1993) — cubic Pm-3m (221) at 403 K, tetragonal P4mm (99)
#: at 280 K, orthorhombic Amm2 (38) at 190 K, rhombohedral R3m (160, rhombohedral axes) at
#: 15 K — with Ba at the origin. The digits were transcribed offline without the paper at
#: hand: read them as the experimental starting geometry of the right space group (the
#: recipes relax every phase under its symmetry with each model and with the labeler).
BATIO3_PHASES: dict[str, dict[str, Any]] = {
    "cubic": {
        "spacegroup": 221,
        "cellpar": [4.0060, 4.0060, 4.0060, 90.0, 90.0, 90.0],
        "sites": [("Ba", (0.0, 0.0, 0.0)), ("Ti", (0.5, 0.5, 0.5)), ("O", (0.0, 0.5, 0.5))],
    },
    "tetragonal": {
        "spacegroup": 99,
        "cellpar": [3.9998, 3.9998, 4.0180, 90.0, 90.0, 90.0],
        "sites": [
            ("Ba", (0.0, 0.0, 0.0)),
            ("Ti", (0.5, 0.5, 0.482)),
            ("O", (0.5, 0.5, 0.016)),
            ("O", (0.5, 0.0, 0.515)),
        ],
    },
    "orthorhombic": {
        "spacegroup": 38,
        "cellpar": [3.9828, 5.6745, 5.6916, 90.0, 90.0, 90.0],
        "sites": [
            ("Ba", (0.0, 0.0, 0.0)),
            ("Ti", (0.5, 0.0, 0.5170)),
            ("O", (0.0, 0.0, 0.4890)),
            ("O", (0.5, 0.2561, 0.2341)),
        ],
    },
    "rhombohedral": {
        "spacegroup": 160,
        "cellpar": [4.0036, 4.0036, 4.0036, 89.839, 89.839, 89.839],
        "sites": [
            ("Ba", (0.0, 0.0, 0.0)),
            ("Ti", (0.4870, 0.4870, 0.4870)),
            ("O", (0.5110, 0.5110, 0.0193)),
        ],
    },
}


def batio3(phase: str) -> Atoms:
    """A BaTiO₃ phase of :data:`BATIO3_PHASES`: its primitive cell (5 atoms; the
    orthorhombic Amm2 phase: its 10-atom conventional cell), ``info["spacegroup"]`` set."""
    from ase.spacegroup import crystal

    if phase not in BATIO3_PHASES:
        raise ValueError(f"unknown BaTiO3 phase {phase!r}; known: {list(BATIO3_PHASES)}")
    data = BATIO3_PHASES[phase]
    symbols = [s for s, _ in data["sites"]]
    basis = [xyz for _, xyz in data["sites"]]
    setting = 2 if data["spacegroup"] == 160 else 1  # R3m on rhombohedral axes
    made = crystal(
        symbols, basis, spacegroup=data["spacegroup"], cellpar=data["cellpar"], setting=setting
    )
    atoms = Atoms(
        made.get_chemical_symbols(),
        cell=made.cell,
        scaled_positions=made.get_scaled_positions(),
        pbc=True,
    )
    atoms.info["spacegroup"] = int(data["spacegroup"])
    return atoms


#: The supplement's doped perovskite, Ba₀.₅Na₀.₂₅Bi₀.₂₅Ti₀.₈₇₅Zr₀.₁₂₅O₃: A- and B-site
#: fractions.
DOPED_PEROVSKITE: dict[str, dict[str, float]] = {
    "A": {"Ba": 0.5, "Na": 0.25, "Bi": 0.25},
    "B": {"Ti": 0.875, "Zr": 0.125},
}


def doped_perovskite(
    seed: int = 0,
    size: int | Sequence[int] = 2,
    fractions: dict[str, dict[str, float]] | None = None,
) -> Atoms:
    """A seeded random A/B-site substitution of cubic BaTiO₃, built with pymatgen.

    Parameters
    ----------
    seed
        ``np.random.default_rng(seed)`` draws which A and B sites take which element.
    size
        Repeats of the cubic 5-atom cell (2: the supplement's 40-atom 2×2×2 cell).
    fractions
        ``{"A": {element: fraction}, "B": {...}}`` (default :data:`DOPED_PEROVSKITE`); each
        count ``fraction · n_sites`` must be an integer and the fractions of a site must add
        to 1.

    Returns
    -------
    Atoms
        ``info["perovskite_seed"]``: the seed.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    fractions = DOPED_PEROVSKITE if fractions is None else fractions
    cubic = AseAtomsAdaptor.get_structure(batio3("cubic"))
    repeats = np.full(3, int(size)) if np.ndim(size) == 0 else np.asarray(size, dtype=int)
    structure = cubic * tuple(int(n) for n in repeats)
    rng = np.random.default_rng(seed)
    for site, host in (("A", "Ba"), ("B", "Ti")):
        share = fractions[site]
        if abs(sum(share.values()) - 1.0) > 1e-9:
            raise ValueError(f"{site}-site fractions must add to 1, got {share}")
        indices = [i for i, s in enumerate(structure) if s.specie.symbol == host]
        counts = {el: f * len(indices) for el, f in share.items()}
        if any(abs(c - round(c)) > 1e-9 for c in counts.values()):
            raise ValueError(
                f"{site}-site fractions {share} need whole atoms of {len(indices)} sites"
            )
        order = rng.permutation(indices)
        start = 0
        for element, count in counts.items():
            for i in order[start : start + round(count)]:
                structure.replace(int(i), element)
            start += round(count)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    out = Atoms(atoms.get_chemical_symbols(), cell=atoms.cell, positions=atoms.positions, pbc=True)
    out.info["perovskite_seed"] = int(seed)
    return out


def amorphous_carbon(
    n_atoms: int,
    density_g_cm3: float = 3.0,
    min_distance_A: float = 1.3,
    seed: int = 0,
    max_attempts: int = 100_000,
) -> Atoms:
    """Random carbon in a cubic periodic cell: the starting point of a melt-quench.

    Atoms are placed one by one at uniformly random positions
    (``np.random.default_rng(seed)``), a position closer than ``min_distance_A`` to an
    atom already placed (minimum image) being drawn again. The supplement's RG² generator
    (random sp³-rich networks, not on PyPI) is not used: such a packing has no bonding
    topology; MD with a model (melt, quench) gives it one, and
    :func:`pfd_ase.analysis.structure.sp3_fraction` measures what came out.

    Parameters
    ----------
    n_atoms
        Atoms in the cell.
    density_g_cm3
        Mass density, g/cm³ (diamond 3.52, sp³-rich amorphous carbon about 3.0-3.3,
        graphite 2.26).
    min_distance_A
        Smallest allowed distance, Å (the C-C bond is 1.42-1.54 Å).
    seed
        The random generator's seed.
    max_attempts
        Draws allowed in all before giving up.

    Raises
    ------
    ValueError
        Non-positive sizes, or no packing found within ``max_attempts`` draws (too dense for
        ``min_distance_A``).
    """
    from ase.data import atomic_masses, atomic_numbers
    from ase.geometry import get_distances

    if n_atoms < 1 or density_g_cm3 <= 0 or min_distance_A < 0:
        raise ValueError("n_atoms, density_g_cm3 must be positive and min_distance_A >= 0")
    mass_g = n_atoms * atomic_masses[atomic_numbers["C"]] / 6.02214076e23
    length = (mass_g / density_g_cm3 * 1e24) ** (1 / 3)  # Å
    cell = np.eye(3) * length
    rng = np.random.default_rng(seed)
    positions = np.empty((0, 3))
    attempts = 0
    while len(positions) < n_atoms:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"placed {len(positions)} of {n_atoms} atoms at {density_g_cm3} g/cm³ with "
                f"{min_distance_A} Å apart in {max_attempts} draws: too dense"
            )
        trial = rng.random(3) * length
        if len(positions):
            _, d = get_distances(trial[None], positions, cell=cell, pbc=True)
            if d.min() < min_distance_A:
                continue
        positions = np.vstack([positions, trial])
    atoms = Atoms(f"C{n_atoms}", positions=positions, cell=cell, pbc=True)
    atoms.info.update(amorphous_seed=int(seed), density_g_cm3=float(density_g_cm3))
    return atoms


# --------------------------------------------------------------------------- polyisoprene

#: The 1,4-isoprene repeat unit -CH2-C(CH3)=CH-CH2- as SMILES, by isomer: the chain carbons on
#: the same side of the double bond (``cis``, natural rubber) or on opposite sides (``trans``,
#: gutta-percha).
ISOPRENE_UNITS: dict[str, str] = {"cis": "C/C(C)=C\\C", "trans": "C/C(C)=C/C"}


def polyisoprene(n_units: int = 4, isomer: str = "cis", seed: int = 0) -> Atoms:
    """A 1,4-polyisoprene oligomer H-(C₅H₈)ₙ-H in vacuum (``pbc=False``, no cell).

    The chain is built from SMILES (:data:`ISOPRENE_UNITS`) by RDKit: a random conformer
    (ETKDG v3, seeded) relaxed with the MMFF94 force field, centred at the origin. Its
    formula is C₅ₙH₈ₙ₊₂ (``n_units=4``: C₂₀H₃₄, 54 atoms; 13: C₆₅H₁₀₆, 171 atoms). The
    first unit's double bond carries two methyl groups (the chain end), so it is neither
    cis nor trans; every other unit is of ``isomer``.

    Raises
    ------
    ValueError
        ``n_units`` < 1, an unknown isomer, or RDKit finds no conformer.
    ImportError
        RDKit is missing (``pip install 'pfd_ase[molecules]'``).
    """
    if isomer not in ISOPRENE_UNITS:
        raise ValueError(f"unknown isomer {isomer!r}; known: {list(ISOPRENE_UNITS)}")
    if int(n_units) < 1:
        raise ValueError(f"n_units must be at least 1, got {n_units}")
    chem, allchem = _rdkit()
    mol = chem.AddHs(chem.MolFromSmiles(ISOPRENE_UNITS[isomer] * int(n_units)))
    params = allchem.ETKDGv3()
    params.randomSeed = int(seed)
    if allchem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit found no conformer of {n_units} {isomer} units (seed {seed})")
    allchem.MMFFOptimizeMolecule(mol, maxIters=10_000)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    positions = np.asarray(mol.GetConformer().GetPositions(), dtype=float)
    atoms = Atoms(symbols, positions=positions - positions.mean(axis=0), pbc=False)
    atoms.info.update(isomer=isomer, n_units=int(n_units), conformer_seed=int(seed))
    return atoms


def chain_dihedrals(atoms: Atoms) -> np.ndarray:
    """The C1-C2=C3-C4 dihedral of each unit of :func:`polyisoprene`, degrees (0: cis, 180:
    trans); RDKit's atom order (heavy atoms first, five per unit) is assumed."""
    n = int(atoms.info["n_units"])
    return np.array([atoms.get_dihedral(5 * k, 5 * k + 1, 5 * k + 3, 5 * k + 4) for k in range(n)])


def polymer_cluster(
    chains: Sequence[Atoms], min_gap_A: float = 2.5, seed: int = 0, max_attempts: int = 10_000
) -> Atoms:
    """Several molecules packed in vacuum (``pbc=False``): each randomly rotated and placed
    next to those before it, no two atoms of different molecules closer than ``min_gap_A``.

    Molecule ``k`` is rotated uniformly at random (``np.random.default_rng(seed)``) and
    moved along a random direction from the cluster's centre to the first distance where it
    clears the others by ``min_gap_A`` (steps of 0.25 Å), so that the molecules touch. The
    result keeps each atom's molecule index in the ``molecule`` array.

    Raises
    ------
    ValueError
        No chains, a periodic chain, or no placement found.
    """
    from scipy.spatial.distance import cdist
    from scipy.spatial.transform import Rotation

    if not chains:
        raise ValueError("no chains to pack")
    if any(np.any(c.pbc) for c in chains):
        raise ValueError("polymer_cluster packs molecules in vacuum: every chain needs pbc=False")
    rng = np.random.default_rng(seed)
    symbols: list[str] = []
    positions = np.empty((0, 3))
    index: list[int] = []
    for k, chain in enumerate(chains):
        local = chain.positions - chain.positions.mean(axis=0)
        local = Rotation.random(random_state=rng).apply(local)
        if k:
            centre = positions.mean(axis=0)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            for step in range(max_attempts):
                trial = local + centre + 0.25 * step * direction
                if cdist(trial, positions).min() >= min_gap_A:
                    local = trial
                    break
            else:
                raise ValueError(f"molecule {k} could not be placed {min_gap_A} Å from the others")
        symbols += chain.get_chemical_symbols()
        positions = np.vstack([positions, local])
        index += [k] * len(chain)
    atoms = Atoms(symbols, positions=positions - positions.mean(axis=0), pbc=False)
    atoms.set_array("molecule", np.array(index, dtype=int))
    atoms.info.update(n_molecules=len(chains), cluster_seed=int(seed))
    return atoms


def _rdkit() -> tuple[Any, Any]:
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "building molecules needs RDKit: pip install 'pfd_ase[molecules]'"
        ) from exc
    return Chem, AllChem


# --------------------------------------------------------------------------- Li | Li6PS5X

#: Cubic lattice parameters of the argyrodites Li₆PS₅X (Å; room-temperature diffraction,
#: Deiseroth et al., Angew. Chem. Int. Ed. 47, 755 (2008) and later refinements, rounded) and of
#: bcc lithium (PBE, about 3.44 Å; experiment 3.48 Å at room temperature).
ARGYRODITE_LATTICE: dict[str, float] = {"Cl": 9.859, "Br": 9.987, "I": 10.142}
LITHIUM_BCC_A = 3.44

#: Wyckoff positions of argyrodite Li₆PS₅X in F-43m (No. 216), anion-ordered: X on 4a, the
#: free S²⁻ on 4c, PS₄ tetrahedra (P 4b, S 16e), Li on half of the 48h sites (the two 48h
#: sites of a pair are 1.7 Å apart: one Li each). Transcribed offline from the literature's
#: refinements (values rounded); checked by distances (P-S 2.03 Å, Li with three S at
#: 2.42-2.44 Å and one X at 2.64 Å for X = Cl).
ARGYRODITE_WYCKOFF: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("Li", (0.311, 0.98, 0.689)),
    ("P", (0.5, 0.5, 0.5)),
    ("S", (0.619, 0.619, 0.619)),
    ("S", (0.25, 0.25, 0.25)),
    ("X", (0.0, 0.0, 0.0)),
)


def argyrodite(
    halogen: str = "Cl", seed: int = 0, n_orderings: int = 100, a: float | None = None
) -> Atoms:
    """The 52-atom cubic cell of argyrodite Li₆PS₅X (X = Cl, Br, I) with ordered Li.

    Ordering rule: each pair of 48h sites 1.7 Å apart holds exactly one Li (24 Li on 48
    sites); of ``n_orderings`` such assignments drawn at random
    (``np.random.default_rng(seed)``) the one of lowest Ewald energy with formal charges
    (Li⁺, P⁵⁺, S²⁻, X⁻; pymatgen's ``EwaldSummation``) is kept. Halide and S²⁻ are ordered
    (X on 4a, S on 4c), as in Li₆PS₅I; Cl and Br argyrodites show some 4a/4c site exchange.

    Raises
    ------
    ValueError
        An unknown halogen or ``n_orderings`` < 1.
    """
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    if halogen not in ARGYRODITE_LATTICE:
        raise ValueError(f"unknown halogen {halogen!r}; known: {list(ARGYRODITE_LATTICE)}")
    if n_orderings < 1:
        raise ValueError(f"n_orderings must be at least 1, got {n_orderings}")
    species = [halogen if s == "X" else s for s, _ in ARGYRODITE_WYCKOFF]
    coords = [list(c) for _, c in ARGYRODITE_WYCKOFF]
    lattice = Lattice.cubic(a or ARGYRODITE_LATTICE[halogen])
    full = Structure.from_spacegroup("F-43m", lattice, species, coords)
    li = [k for k, site in enumerate(full) if site.specie.symbol == "Li"]
    d = full.distance_matrix[np.ix_(li, li)]
    np.fill_diagonal(d, np.inf)
    partner = d.argmin(axis=1)
    pairs = sorted({tuple(sorted((li[k], li[int(p)]))) for k, p in enumerate(partner)})
    if len(pairs) != len(li) // 2:
        raise RuntimeError("the 48h sites do not form pairs")  # a wrong Wyckoff table
    charges = {"Li": 1, "P": 5, "S": -2, halogen: -1}
    rng = np.random.default_rng(seed)
    best: tuple[float, Any] | None = None
    for _ in range(int(n_orderings)):
        bits = rng.integers(0, 2, len(pairs))
        drop = [pair[int(bit)] for pair, bit in zip(pairs, bits, strict=True)]
        trial = full.copy()
        trial.remove_sites(drop)
        trial.add_oxidation_state_by_element(charges)
        energy = EwaldSummation(trial).total_energy
        if best is None or energy < best[0]:
            best = (energy, trial)
    assert best is not None
    structure = best[1]
    structure.remove_oxidation_states()
    made = AseAtomsAdaptor.get_atoms(structure)
    order = np.argsort(made.numbers, kind="stable")
    atoms = Atoms(made.numbers[order], positions=made.positions[order], cell=made.cell, pbc=True)
    atoms.info.update(ordering_seed=int(seed), ewald_eV=float(best[0]))
    return atoms


def lithium_bcc(repeat: Sequence[int] = (2, 2, 2), a: float = LITHIUM_BCC_A) -> Atoms:
    """bcc lithium, the conventional 2-atom cell repeated (``(2, 2, 2)``: 16 atoms)."""
    from ase.build import bulk

    return bulk("Li", "bcc", a=a, cubic=True).repeat(tuple(int(n) for n in repeat))


def stack_interface(
    bottom: Atoms,
    top: Atoms,
    gap_A: float = 2.0,
    strain: str = "top",
    keep_bonds: dict[tuple[str, str], float] | None = None,
) -> Atoms:
    """Stack a slab of ``top`` on a slab of ``bottom`` along c: a periodic cell with two
    interfaces, each ``gap_A`` between the outermost atomic planes.

    Each bulk cell becomes a slab by cutting it, along c, in the widest empty layer that
    breaks no bond of ``keep_bonds`` (element pair → length, Å; e.g. P-S for PS₄). The
    in-plane lattices must be orthogonal to c. ``strain="top"`` strains ``top`` in plane to
    ``bottom``'s lattice (the metal side, when ``top`` is the metal), ``"shared"`` strains
    both to their mean; a strained slab keeps its volume (its thickness scales by the inverse
    of its area change). The lattice mismatch ``(top - bottom) / bottom`` of a and b, in
    percent, is kept in ``info["mismatch_pct"]``, the strain of each side in
    ``info["strain_pct"]``.

    Raises
    ------
    ValueError
        Non-periodic cells, cells whose c is not normal to a and b, a negative gap, an unknown
        strain rule, or no layer that can be cut.
    """
    if strain not in ("top", "shared"):
        raise ValueError(f"strain is 'top' or 'shared', got {strain!r}")
    if gap_A < 0:
        raise ValueError(f"gap_A must be >= 0, got {gap_A}")
    slabs = []
    for atoms in (bottom, top):
        if not atoms.pbc.all():
            raise ValueError("stack_interface takes periodic bulk cells")
        cell = atoms.cell.array
        if abs(cell[2] @ cell[0]) > 1e-6 or abs(cell[2] @ cell[1]) > 1e-6:
            raise ValueError("the c axis must be normal to a and b")
        slabs.append(_cut_along_c(atoms, keep_bonds or {}))
    plane_b = np.array(slabs[0].cell.lengths()[:2])
    plane_t = np.array(slabs[1].cell.lengths()[:2])
    mismatch = (plane_t - plane_b) / plane_b * 100.0
    target = plane_b if strain == "top" else (plane_b + plane_t) / 2
    parts, strains = [], []
    for slab, plane in zip(slabs, (plane_b, plane_t), strict=True):
        factor = target / plane
        strains.append(((factor - 1) * 100.0).tolist())
        cell = slab.cell.array.copy()
        cell[0] *= factor[0]
        cell[1] *= factor[1]
        cell[2] /= factor[0] * factor[1]  # volume kept
        new = slab.copy()
        new.set_cell(cell, scale_atoms=True)
        parts.append(new)
    low, high = parts
    z_low = low.positions[:, 2]
    z_high = high.positions[:, 2]
    shift = z_low.max() - z_high.min() + gap_A
    positions = np.vstack([low.positions, high.positions + [0.0, 0.0, shift]])
    # a and b from the bottom after its strain (shared: both equal now)
    cell = low.cell.array.copy()
    cell[2] = (
        cell[2]
        / np.linalg.norm(cell[2])
        * ((z_low.max() - z_low.min()) + (z_high.max() - z_high.min()) + 2 * gap_A)
    )
    out = Atoms(
        low.get_chemical_symbols() + high.get_chemical_symbols(),
        positions=positions - [0.0, 0.0, z_low.min()],
        cell=cell,
        pbc=True,
    )
    out.set_array("side", np.array([0] * len(low) + [1] * len(high), dtype=int))
    out.info.update(
        mismatch_pct=mismatch.tolist(), strain_pct={"bottom": strains[0], "top": strains[1]}
    )
    return out


def _cut_along_c(atoms: Atoms, keep_bonds: dict[tuple[str, str], float]) -> Atoms:
    """``atoms`` shifted along c so that its atoms lie in one slab [0, c): the cut is the
    middle of the widest empty layer (fractional c) that no bond of ``keep_bonds`` crosses."""
    from ase.neighborlist import neighbor_list

    frac = atoms.get_scaled_positions(wrap=True)[:, 2]
    order = np.sort(frac)
    gaps = np.diff(np.append(order, order[0] + 1.0))
    crossing: list[tuple[float, float]] = []  # (start height, fractional length along c)
    if keep_bonds:
        cutoff = max(keep_bonds.values())
        i, j, vec = neighbor_list("ijD", atoms, cutoff)
        along_c = vec @ np.linalg.inv(atoms.cell.array)[:, 2]
        lengths = np.linalg.norm(vec, axis=1)
        symbols = np.array(atoms.get_chemical_symbols())
        for a, b, dz, dist in zip(i, j, along_c, lengths, strict=True):
            pair = (str(symbols[a]), str(symbols[b]))
            limit = keep_bonds.get(pair, keep_bonds.get(pair[::-1]))
            if limit is not None and dist <= limit:
                crossing.append((frac[a], dz))
    for k in np.argsort(gaps)[::-1]:
        cut = (order[k] + gaps[k] / 2) % 1.0
        if all(not _crosses(cut, z, dz) for z, dz in crossing):
            out = atoms.copy()
            scaled = atoms.get_scaled_positions(wrap=True)
            scaled[:, 2] = (scaled[:, 2] - cut) % 1.0
            out.set_scaled_positions(scaled)
            out.set_pbc([True, True, True])
            return out
    raise ValueError("no layer along c can be cut without breaking a kept bond")


def _crosses(cut: float, start: float, length: float) -> bool:
    """Whether a bond from fractional height ``start`` over ``length`` (fractional, along c)
    crosses the plane at ``cut`` or one of its periodic images."""
    begin = (start - cut) % 1.0
    return not 0.0 <= begin + length < 1.0 or begin == 0.0 and length != 0.0
