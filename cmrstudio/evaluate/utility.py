"""Utility: does synthetic data help train a segmenter that works on real patients?

Patient-level splits. The held-out patients (the generator's, by default) are the test set and are
never trained on. From the training patients, a seeded fraction (10%, 25%, 100%, ...) of *patients*
is drawn; then three segmenters are trained for the same fixed number of iterations, from the same
initialisation:

* **real**: the real slices of those patients;
* **real + synthetic**: the same, plus renders of their masks by the generator (``per_mask`` seeds each);
* **synthetic**: the renders only.

Each is scored on the held-out real patients: Dice and HD95 (mm) per structure
(:mod:`cmrstudio.evaluate.segmentation`). Arms are compared with *real* at the same fraction by a
paired Wilcoxon signed-rank test over held-out cases (each case's mean Dice averaged over seeds).
Everything happens in the generator's frame. The generator itself was trained on all training patients,
so at small fractions "real + synthetic" also carries what the generator learnt from the others: this
measures the data a user would have, not a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cmrstudio.errors import CmrError

ARMS = ("real", "real+synthetic", "synthetic")


@dataclass
class UtilityPreset:
    fractions: tuple[float, ...]
    seeds: int
    steps: int
    base: int
    batch: int
    per_mask: int
    lr: float = 2e-3


PRESETS = {
    # 2 CPU cores: a few minutes on the real data
    "cpu": UtilityPreset(fractions=(0.25, 1.0), seeds=2, steps=150, base=8, batch=8, per_mask=1),
    # the GPU machine: the figures to publish
    "full": UtilityPreset(fractions=(0.1, 0.25, 1.0), seeds=3, steps=3000, base=16, batch=16, per_mask=2),
}


def check_fractions(fractions) -> tuple[float, ...]:
    out = []
    for f in fractions:
        try:
            v = float(f)
        except (TypeError, ValueError):
            raise CmrError(f"--fractions: {f!r} is not a number; give fractions of the training patients like 0.1,0.25,1.") from None
        if not 0 < v <= 1:
            raise CmrError(f"--fractions: {v:g} must lie in (0, 1] (a fraction of the training patients).")
        out.append(v)
    if not out:
        raise CmrError("--fractions is empty; give fractions of the training patients like 0.1,0.25,1.")
    return tuple(sorted(set(out)))


def train_unet(images01: np.ndarray, masks: np.ndarray, steps: int, base: int, batch: int, seed: int, lr: float = 2e-3,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """A U-Net trained from scratch for a fixed number of iterations on framed slices (cross-entropy + soft Dice,
    intensity augmentation). The initialisation and the batch order depend only on ``seed``."""
    from cmrstudio.models.unet import UNet, UNetConfig
    from cmrstudio.train.segmenter import intensity_augment, seg_train_step

    if len(images01) == 0:
        raise CmrError("A training arm has no slices; use a larger fraction or more data.")
    torch.manual_seed(seed)
    net = UNet(UNetConfig(size=int(images01.shape[-1]), base=base)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
    g = torch.Generator().manual_seed(seed + 1)
    x_all = torch.from_numpy(np.asarray(images01, np.float32) * 2 - 1)[:, None]
    y_all = torch.from_numpy(np.asarray(masks, np.int64))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (min(batch, len(x_all)),), generator=g)
        seg_train_step(net, opt, sched, intensity_augment(x_all[idx], g).to(device), y_all[idx].to(device))
    return net.eval()


def _patient_subset(patients: list[str], fraction: float, seed: int) -> list[str]:
    uniq = sorted(set(patients))
    k = max(1, int(round(fraction * len(uniq))))
    return sorted(np.random.default_rng(seed).permutation(uniq)[:k].tolist())


@dataclass
class Utility:
    generator: dict
    preset: dict
    train_patients: int
    test_cases: list[str]
    rows: list[dict]  # one per fraction x arm: Dice/HD95 per structure (mean and SD over seeds)
    tests: list[dict]  # paired Wilcoxon tests of each arm against real at the same fraction
    runs: list[dict] = field(default_factory=list)  # every (fraction, arm, seed): per-case scores

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_utility(cases, held_out: list[str], model=None, fractions=(0.25, 1.0), seeds: int = 2, steps: int = 150,
                     base: int = 8, batch: int = 8, per_mask: int = 1, lr: float = 2e-3, device: str | None = None,
                     progress=None) -> Utility:
    """Train-on-real vs real+synthetic vs synthetic, scored on held-out real patients. See the module docstring."""
    from scipy.stats import wilcoxon

    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.segment import segment_images
    from cmrstudio.evaluate.privacy import render_each, slices_of, split_members
    from cmrstudio.metrics import STRUCTURES, case_scores

    from cmrstudio.train.common import check_counts

    fractions = check_fractions(fractions)
    check_counts(seeds=seeds, steps=steps, batch=batch, per_mask=per_mask)
    train_c, test_c = split_members(cases, held_out)
    r = open_renderer(model, device=device)
    train = slices_of(train_c, r)
    test_sets = [(c.case_id, slices_of([c], r)) for c in test_c]
    test_sets = [(cid, s) for cid, s in test_sets if len(s)]
    if len(train) < 2 or not test_sets:
        raise CmrError("Utility needs heart slices of training patients and of held-out patients.")
    spacing = float(r.spacing_mm or 1.25)
    dev = r.device
    runs = []
    total = len(fractions) * seeds * len(ARMS)
    done = 0
    for f in fractions:
        for s in range(seeds):
            keep = set(_patient_subset(train.patients, f, s))
            sub = train.subset([i for i, p in enumerate(train.patients) if p in keep])
            synth = np.concatenate([render_each(r, sub, [100_000 * (k + 1) + 1000 * s + i for i in range(len(sub))]) for k in range(per_mask)])
            syn_masks = np.concatenate([sub.masks] * per_mask)
            data = {"real": (sub.images, sub.masks), "synthetic": (synth, syn_masks),
                    "real+synthetic": (np.concatenate([sub.images, synth]), np.concatenate([sub.masks, syn_masks]))}
            for arm in ARMS:
                net = train_unet(*data[arm], steps=steps, base=base, batch=batch, seed=1000 * s + 7, lr=lr, device=dev)
                per_case = {}
                for cid, ts in test_sets:
                    pred = segment_images(net, ts.images, int(ts.images.shape[-1]))
                    per_case[cid] = case_scores(pred, ts.masks, spacing)
                runs.append({"fraction": f, "arm": arm, "seed": s, "patients": len(keep), "slices": len(data[arm][0]), "per_case": per_case})
                done += 1
                if progress:
                    progress(done, total, f"fraction {f:g}, seed {s}, {arm}: trained on {len(data[arm][0])} slices")

    def case_mean(run, cid):
        v = [run["per_case"][cid][n]["dice"] for n in STRUCTURES.values() if n in run["per_case"][cid]]
        return float(np.mean(v)) if v else np.nan

    rows = []
    for f in fractions:
        for arm in ARMS:
            rs = [x for x in runs if x["fraction"] == f and x["arm"] == arm]
            row = {"fraction": f, "arm": arm, "patients": rs[0]["patients"], "slices": int(np.mean([x["slices"] for x in rs]))}
            for n in list(STRUCTURES.values()) + ["mean"]:
                for metric in ("dice", "hd95_mm"):
                    per_seed = []
                    for x in rs:
                        if n == "mean":
                            v = [x["per_case"][c][m][metric] for c in x["per_case"] for m in x["per_case"][c] if x["per_case"][c][m][metric] is not None]
                        else:
                            v = [x["per_case"][c][n][metric] for c in x["per_case"] if n in x["per_case"][c] and x["per_case"][c][n][metric] is not None]
                        if v:
                            per_seed.append(float(np.mean(v)))
                    row[f"{n}_{metric}"] = round(float(np.mean(per_seed)), 4) if per_seed else None
                    row[f"{n}_{metric}_sd"] = round(float(np.std(per_seed, ddof=1)), 4) if len(per_seed) > 1 else None
            rows.append(row)
    tests = []
    cids = [cid for cid, _ in test_sets]
    for f in fractions:
        base_runs = [x for x in runs if x["fraction"] == f and x["arm"] == "real"]
        a = np.array([np.mean([case_mean(x, c) for x in base_runs]) for c in cids])
        for arm in ARMS[1:]:
            other = [x for x in runs if x["fraction"] == f and x["arm"] == arm]
            b = np.array([np.mean([case_mean(x, c) for x in other]) for c in cids])
            ok = ~(np.isnan(a) | np.isnan(b))
            diff = b[ok] - a[ok]
            p = None
            if ok.sum() >= 2 and np.any(diff != 0):
                p = float(wilcoxon(b[ok], a[ok]).pvalue)
            tests.append({"fraction": f, "arm": arm, "versus": "real", "cases": int(ok.sum()), "mean_dice_difference": round(float(diff.mean()), 4),
                          "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "wilcoxon_p": p})
    preset = {"fractions": list(fractions), "seeds": seeds, "steps": steps, "base": base, "batch": batch, "per_mask": per_mask, "lr": lr}
    return Utility(r.describe(), preset, len(set(train.patients)), cids, rows, tests, runs)


def utility_figure(path, res: Utility) -> str:
    """Mean Dice on held-out patients against the fraction of real training patients, one line per arm (± SD over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmrstudio.io.common import atomic_path

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for arm, style in zip(ARMS, ("o-", "s--", "^:")):
        rs = [r for r in res.rows if r["arm"] == arm]
        ax.errorbar([100 * r["fraction"] for r in rs], [r["mean_dice"] for r in rs], yerr=[r["mean_dice_sd"] or 0 for r in rs],
                    fmt=style, capsize=3, label=arm)
    ax.set_xscale("log")
    pct = [100 * f for f in res.preset["fractions"]]
    ax.set_xticks(pct, [f"{v:g}%" for v in pct])
    ax.minorticks_off()
    ax.set_xlabel("training patients used (%)")
    ax.set_ylabel("mean Dice, held-out patients")
    ax.set_title(f"Utility of {res.generator.get('model')}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return str(path)
