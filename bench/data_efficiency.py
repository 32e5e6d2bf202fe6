"""Data efficiency (issue 15.1; DPA-2 paper Fig. 3): a pre-trained model fine-tuned against the
same architecture trained from scratch, against the number of labelled frames.

::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/data_efficiency.py --quick
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/data_efficiency.py

**Frames**: one stream of perturbed Si frames (3 % cell strain, 0.07 Å displacements, about
500 K) cycling through the eight structures of the Si study (diamond, hex-diamond, β-Sn, FCC,
BCC, HCP, BC8, diamond with a vacancy; the ``default`` preset's 8-16-atom cells), labelled by
Stillinger-Weber (``--quick``) or GPAW PBE (k-point density 3.5 per Å⁻¹; the full form). Every
model trains on the first N frames of the same stream, in the same order. **Test set**: the
held-out frames of ``bench/selection_efficiency.py`` (5 per structure, a stream nothing else
draws), never trained on.

**Models**, all SevenNet (the package's default base):

(a) SevenNet-0 fine-tuned (:func:`pfd_ase.training.sevennet.finetune_sevennet`, lr 4e-3,
    Huber loss, energy shift refitted, ``--epochs`` epochs, no validation split);
(b) the same architecture from scratch: SevenNet-0's configuration with freshly initialised
    weights (``sevenn``'s own initialisation, seed 0; what is not trained kept: the
    per-element energy shift, refitted to the data as in (a), the force scale and the
    convolutions' neighbour-count normalisation), trained exactly as (a): same epochs,
    batches, learning rate and schedule;
(c) SevenNet-0 untouched.

Scored on the test set: force RMSE (eV/Å), energy RMSE (meV/atom, one constant per element
removed). Headline: the ratio of the frames (b) needs to reach (a)'s force RMSE at ``N_ref``
frames (20 in the full form, 4 in ``--quick``, whose ladder stops at 80), interpolated in
log N; where (b) never reaches it the ratio is reported as a lower bound (> N_max / N_ref).
Goal: ≥ 10. Writes ``bench/results/data_efficiency[_quick].json`` and a PNG beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from selection_efficiency import (  # noqa: E402
    FORMS,
    frames_to_match,
    initial_and_test,
    structures,
    train_and_score,
)

LADDERS = {"quick": (4, 8, 16, 40, 80), "full": (5, 10, 20, 50, 100, 200)}
N_REF = {"quick": 4, "full": 20}
EPOCHS = {"quick": 40, "full": 100}
TRAIN_SEED = 11
GOAL = 10.0


def training_frames(workdir: Path, n: int, labeler: Any) -> list[Atoms]:
    """The first ``n`` frames of the stream, labelled (cached task folders)."""
    from pfd_ase.label import label_frames
    from pfd_ase.structures import perturb

    rng = np.random.default_rng(TRAIN_SEED)
    cells = list(structures().items())
    frames = []
    for k in range(n):
        name, atoms = cells[k % len(cells)]
        frame = perturb(atoms, 1, rng, cell_strain=0.03, displacement_A=0.07)[0]
        frame.info.update(phase=name, pfd_frame_id=f"train.{k}")
        frames.append(frame)
    result = label_frames(frames, labeler, workdir / "labels" / "train")
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} training frames failed to label")
    return result.frames


def scratch_checkpoint(path: Path, seed: int = 0) -> Path:
    """SevenNet-0's checkpoint with its trainable weights freshly initialised.

    What is not trained is kept: the per-element energy shift and scale and each
    convolution's neighbour-count normalisation (SevenNet-0's training-set statistics; a
    fresh model has 0 there and divides by it).
    """
    if path.exists():
        return path
    import torch
    from sevenn.checkpoint import SevenNetCheckpoint
    from sevenn.model_build import build_E3_equivariant_model

    from pfd_ase.calculators.sevennet import read_sevennet_checkpoint, sevennet_pretrained_path

    source = sevennet_pretrained_path()
    raw = read_sevennet_checkpoint(source)
    config = SevenNetCheckpoint(str(source)).config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_E3_equivariant_model(config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = dict(raw["model_state_dict"])
    state.update({k: v for k, v in model.state_dict().items() if k in trainable})
    raw["model_state_dict"] = state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, path)
    return path


def ratio(ladder, finetuned: list[float], scratch: list[float], n_ref: int) -> dict[str, Any]:
    """Frames (b) needs to reach (a)'s force RMSE at ``n_ref``, over ``n_ref``."""
    target = finetuned[list(ladder).index(n_ref)]
    need = frames_to_match(ladder, scratch, target)
    if need is None:
        return {
            "target": target,
            "scratch_frames": None,
            "ratio": None,
            "ratio_lower_bound": ladder[-1] / n_ref,
        }
    return {
        "target": target,
        "scratch_frames": need,
        "ratio": need / n_ref,
        "ratio_lower_bound": None,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ladder = result["ladder"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "force_rmse", "force RMSE (eV/Å)"),
        (axes[1], "energy_rmse_meV", "energy RMSE (meV/atom)"),
    ):
        for name, marker in (("fine-tuned", "o"), ("from scratch", "s")):
            ax.plot(ladder, [r[key] for r in result["curves"][name]], marker=marker, label=name)
        ax.axhline(result["untouched"][key], color="grey", ls="--", label="SevenNet-0 untouched")
        ax.set(xscale="log", yscale="log", xlabel="training frames N", ylabel=label)
        ax.set_xticks(ladder, [str(n) for n in ladder])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
    fig.suptitle(f"held-out Si ({result['labeler']}), {result['epochs']} epochs each")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="SW labels, N up to 80, 40 epochs")
    p.add_argument("--workdir", type=Path, default=None, help="default runs/data_efficiency[_q]")
    p.add_argument("--ladder", type=int, nargs="+", default=None)
    p.add_argument("--n-ref", type=int, default=None, help="N of (a) whose error (b) must reach")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    form = "quick" if args.quick else "full"
    ladder = tuple(args.ladder or LADDERS[form])
    n_ref = args.n_ref or N_REF[form]
    if n_ref not in ladder:
        p.error(f"--n-ref {n_ref} must be one of the ladder {ladder}")
    epochs = args.epochs or EPOCHS[form]
    labeler = FORMS[form]["labeler"]
    suffix = "_quick" if args.quick else ""
    workdir = (args.workdir or ROOT / "runs" / f"data_efficiency{suffix}").resolve()
    output = args.output or RESULTS / f"data_efficiency{suffix}.json"
    t0 = time.perf_counter()

    _, test = initial_and_test(workdir, labeler)
    frames = training_frames(workdir, max(ladder), labeler)
    scratch = str(scratch_checkpoint(workdir / "scratch_init.pth"))
    curves: dict[str, list[dict[str, float]]] = {"fine-tuned": [], "from scratch": []}
    for n in ladder:
        for name, base in (("fine-tuned", "7net-0"), ("from scratch", scratch)):
            tag = f"{name.replace(' ', '_')}.N{n}"
            row = train_and_score(workdir, tag, frames[:n], test, epochs, base=base)
            curves[name].append(row)
            print(f"{name} N={n}: {curves[name][-1]}", flush=True)
    from pfd_ase.analysis.testset import score_models

    s = score_models({"base": "7net-0"}, test)["base"]
    untouched = {"force_rmse": s["force_rmse_eV_A"], "energy_rmse_meV": s["energy_rmse_meV_atom"]}
    r = ratio(
        ladder,
        [row["force_rmse"] for row in curves["fine-tuned"]],
        [row["force_rmse"] for row in curves["from scratch"]],
        n_ref,
    )
    shown = f"{r['ratio']:.1f}" if r["ratio"] is not None else f"> {r['ratio_lower_bound']:g}"
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "form": form,
        "labeler": labeler if isinstance(labeler, str) else labeler[0],
        "ladder": list(ladder),
        "n_ref": n_ref,
        "epochs": epochs,
        "n_test": len(test),
        "curves": curves,
        "untouched": untouched,
        "headline": {
            "scratch_over_finetuned_frames": r["ratio"],
            "lower_bound": r["ratio_lower_bound"],
            "finetuned_force_rmse_at_n_ref": r["target"],
            "shown": shown,
        },
        "goal": f">= {GOAL:g}",
        # a lower bound below the goal decides nothing: met is then None
        "met": r["ratio"] >= GOAL
        if r["ratio"] is not None
        else (True if r["ratio_lower_bound"] >= GOAL else None),
        "wall_s": time.perf_counter() - t0,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    plot(result, output.with_suffix(".png"))
    print(f"\nheld-out force RMSE (eV/Å) / energy RMSE (meV/atom); {epochs} epochs each")
    print("| N | fine-tuned | from scratch |")
    print("|---|---|---|")
    for n, a, b in zip(ladder, curves["fine-tuned"], curves["from scratch"], strict=True):
        print(
            f"| {n} | {a['force_rmse']:.3f} / {a['energy_rmse_meV']:.1f} | "
            f"{b['force_rmse']:.3f} / {b['energy_rmse_meV']:.1f} |"
        )
    print(f"| untouched | {untouched['force_rmse']:.3f} / {untouched['energy_rmse_meV']:.1f} | |")
    print(f"\nframes from scratch / fine-tuned at N={n_ref}: {shown} (goal >= {GOAL:g})")
    print(f"wrote {output} (wall {result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
