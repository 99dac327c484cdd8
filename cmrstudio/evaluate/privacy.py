"""Privacy: does a generator give back the patients it was trained on?

Two measurements, both on real patients split by *patient* into the generator's training
patients (members) and patients it never saw (non-members, the held-out ones of its card):

**Nearest neighbours.** Every synthetic image (renders of held-out masks) and every held-out real
image is compared with every training image, in a feature space (the FID Inception's pool3
features by default, or pixels):

* *distance to the closest training image*, synthetic against the real-to-real baseline (held-out
  real images, which are new patients by construction). A ratio well below 1 means the synthetic
  images sit closer to the training set than new patients do;
* *memorisation*: a synthetic image is flagged when its closest training image is less than a third
  of the distance to the closest training image of any *other* patient (a near copy of one training
  image, not just a typical heart; the 1/3 rule of Carlini et al. 2023 and Yoon et al. 2023, with the
  second neighbour taken from another patient since neighbouring slices of one patient are alike).
  The memorisation ratio is the fraction flagged;
* *authenticity* (Alaa et al., ICML 2022): a synthetic image is authentic when it is farther from its
  closest training image than that training image is from its own closest training neighbour (of
  another patient). The same score of held-out real images is the baseline a private model should reach;
* a figure of the closest pairs side by side.

**Membership inference.** An attacker who holds a real image and its mask asks whether the patient
was in the training set. Scores (higher = "member"):

* *reconstruction*: minus the smallest pixel distance between the real image and renders of its mask
  over several seeds (any generator);
* *denoising loss* (diffusion and flow models): minus the model's training loss on the real image at
  fixed noise levels and noises (Carlini et al. 2023, Matsumoto et al. 2023).

* *neighbourhood-calibrated* (both kinds; Mattern et al. 2023, in the spirit of Watson et al.'s
  difficulty calibration): the score of the real image minus the mean score of its mirror images (left-right,
  up-down, transposed; image and mask together). Training never mirrors, so the mirrors are images of the same
  difficulty the model never saw: a member stands out from its own neighbours, a non-member does not.

Each is reported as ROC AUC (with DeLong's interval, which treats slices as independent) and the true-positive
rate at 1% and 0.1% false positives (with the resolution the number of non-members allows).

**Controls.** Members and non-members differ in more than membership (patients, scanners, the split itself),
so an AUC alone cannot say whether a model leaks. Every attack is also run on *control* splits: two disjoint
halves of the non-member patients (and, separately, of the member patients), scored by the same attack. Paired
resamples by patient compare the attack (k member patients against the second half of the non-members) with the
control (the first half, also k patients, against the same second half): same attack, same sizes, same
negatives. The headline is the **gap** (attack AUC − control AUC) with its 95% interval over the resamples;
a gap whose interval holds 0 is no evidence of leakage, whatever the raw AUC.

**Copies of training images.** Every member slice is compared with every render of the member masks (the
renders the reconstruction attack made); a slice is *reproduced* when some render is closer to it than the
copy threshold: the 5th percentile of the distances between real images of one patient at two phases (a
slice of its ED, or first frame, to its closest slice of the other phase): closer than a patient's own heart a third of a cycle
later. The same count on the non-members (renders of their masks, which the model never saw) is the control.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cmrstudio.errors import CmrError
from cmrstudio.case import patient_of

MEMORISED_RATIO = 1.0 / 3.0
SPACES = ("inception", "pixel")


@dataclass
class SliceSet:
    """Framed real heart slices with their masks, vendors and patients."""

    images: np.ndarray  # (N, S, S) in [0, 1]
    masks: np.ndarray  # (N, S, S) uint8
    vendors: list[str]
    patients: list[str]
    cases: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "SliceSet":
        idx = list(idx)
        return SliceSet(self.images[idx], self.masks[idx], [self.vendors[i] for i in idx], [self.patients[i] for i in idx],
                        [self.cases[i] for i in idx] if self.cases else [], [self.datasets[i] for i in idx] if self.datasets else [])


def slices_of(cases, renderer) -> SliceSet:
    """Every heart slice of ``cases`` in the renderer's frame."""
    from cmrstudio.data.slices import heart_slices

    imgs, masks, vendors, patients, ids, datasets = [], [], [], [], [], []
    for c, im, m in heart_slices(cases, renderer):
        imgs.append(im)
        masks.append(m)
        vendors += [c.vendor] * len(m)
        patients += [patient_of(c.case_id)] * len(m)
        ids += [c.case_id] * len(m)
        datasets += [str((c.source or {}).get("dataset") or "unknown")] * len(m)
    if not imgs:
        return SliceSet(np.zeros((0, renderer.size, renderer.size), np.float32), np.zeros((0, renderer.size, renderer.size), np.uint8), [], [], [], [])
    return SliceSet(np.concatenate(imgs).astype(np.float32), np.concatenate(masks).astype(np.uint8), vendors, patients, ids, datasets)


def features(images01: np.ndarray, space: str = "inception", device: str | torch.device = "cpu") -> np.ndarray:
    """Feature vectors for nearest-neighbour distances: FID Inception pool3 or pixels at 64×64."""
    if space not in SPACES:
        raise CmrError(f"--space {space!r} is not known; use one of {', '.join(SPACES)}.")
    if space == "inception":
        from cmrstudio.evaluate.fidelity import InceptionFeatures

        return InceptionFeatures(device)(images01)
    x = torch.from_numpy(np.asarray(images01, np.float32))[:, None]
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="area")
    return x.flatten(1).double().numpy()


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()


@dataclass
class NearestNeighbours:
    n_train: int
    n_synthetic: int
    n_holdout: int
    space: str
    synthetic_to_train_median: float
    holdout_to_train_median: float | None
    distance_ratio: float | None  # median synthetic->train / median held-out real->train
    memorisation_ratio: float  # fraction of synthetic images flagged as near copies
    memorised: int
    holdout_memorisation_ratio: float | None  # the same rule applied to new real patients (its false-alarm rate)
    authenticity: float  # fraction of synthetic images that are authentic
    holdout_authenticity: float | None
    closest: list[dict]  # the closest synthetic/training pairs: indices and distances

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _nn_rows(query: np.ndarray, train: np.ndarray, train_patients: np.ndarray, own_nn: np.ndarray):
    """For each query: closest training index, its distance, the distance to the closest training image of
    another patient than that one, and whether it is authentic."""
    d = _dist(query, train)
    j = d.argmin(1)
    d1 = d[np.arange(len(d)), j]
    other = np.where(train_patients[None, :] != train_patients[j][:, None], d, np.inf).min(1)
    flagged = d1 < MEMORISED_RATIO * other
    authentic = d1 >= own_nn[j]
    return j, d1, flagged, authentic


def nearest_neighbours(train_f: np.ndarray, train_patients: list[str], synth_f: np.ndarray, holdout_f: np.ndarray | None = None,
                       space: str = "inception", top: int = 8) -> NearestNeighbours:
    """Nearest-neighbour distances of synthetic (and held-out real) features to the training features."""
    if len(train_f) < 2 or len(synth_f) < 1:
        raise CmrError("The nearest-neighbour analysis needs at least two training images and one synthetic image.")
    tp = np.asarray(train_patients)
    if len(set(tp)) < 2:
        raise CmrError("The nearest-neighbour analysis needs training images of at least two patients.")
    dtt = _dist(train_f, train_f)
    own_nn = np.where(tp[None, :] != tp[:, None], dtt, np.inf).min(1)  # each training image to another patient's
    j, d1, flagged, authentic = _nn_rows(synth_f, train_f, tp, own_nn)
    hold = None
    if holdout_f is not None and len(holdout_f):
        hold = _nn_rows(holdout_f, train_f, tp, own_nn)
    order = np.argsort(d1)[:top]
    h_med = float(np.median(hold[1])) if hold else None
    s_med = float(np.median(d1))
    return NearestNeighbours(
        len(train_f), len(synth_f), 0 if hold is None else len(hold[1]), space, s_med, h_med,
        (s_med / h_med) if h_med else None, float(flagged.mean()), int(flagged.sum()),
        float(hold[2].mean()) if hold else None, float(authentic.mean()), float(hold[3].mean()) if hold else None,
        [{"synthetic": int(i), "train": int(j[i]), "distance": float(d1[i]), "flagged": bool(flagged[i])} for i in order])


# -- membership inference ----------------------------------------------------------------------

def _tpr_at(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the largest threshold whose false-positive rate is at most ``fpr``."""
    from cmrstudio.study.stats import roc_points

    roc = roc_points(list(pos), list(neg))
    best = 0.0
    for f, t in zip(roc["fpr"], roc["tpr"]):
        if f <= fpr + 1e-12:
            best = max(best, t)
    return float(best)


def attack_summary(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict:
    from cmrstudio.study.stats import auc

    from cmrstudio.study.stats import roc_points

    a = auc(list(member_scores), list(nonmember_scores))
    roc = roc_points(list(member_scores), list(nonmember_scores))
    keep = np.unique(np.linspace(0, len(roc["fpr"]) - 1, min(len(roc["fpr"]), 101)).round().astype(int))  # enough points to draw it
    return {"auc": a["auc"], "auc_ci": a["auc_ci"], "tpr_at_1pct_fpr": _tpr_at(member_scores, nonmember_scores),
            "tpr_at_0_1pct_fpr": _tpr_at(member_scores, nonmember_scores, 0.001),
            "fpr_resolution": 1.0 / max(1, len(nonmember_scores)),  # below this, "x% FPR" means no false positive at all
            "members": int(len(member_scores)), "nonmembers": int(len(nonmember_scores)),
            "roc": {"fpr": [round(roc["fpr"][i], 4) for i in keep], "tpr": [round(roc["tpr"][i], 4) for i in keep]}}


def _auc_fast(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann–Whitney AUC of ``pos`` over ``neg`` (ties one half), by ranks: what the resamples need many times."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def controlled(pos: np.ndarray, neg: np.ndarray, pos_patients, neg_patients, resamples: int = 400, seed: int = 0) -> dict | None:
    """The attack against its control splits (module docstring: *Controls*), by patient.

    Each resample splits the non-member patients into halves A and B at random and draws k = |A| member patients:
    attack = AUC(members_k vs B), control = AUC(A vs B), gap = attack − control. The member-vs-member control
    (two halves of the member patients) is reported beside it. None with fewer than 4 non-member patients."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    pp, npat = np.asarray(pos_patients), np.asarray(neg_patients)
    up, un = np.unique(pp), np.unique(npat)
    if len(un) < 4 or len(up) < 2:
        return None
    by_p = {p: np.flatnonzero(pp == p) for p in up}
    by_n = {p: np.flatnonzero(npat == p) for p in un}
    rng = np.random.default_rng(seed)
    k = len(un) // 2
    km = min(k, len(up))
    gaps, att, ctl, mm = [], [], [], []
    for _ in range(resamples):
        perm = rng.permutation(un)
        a_idx = np.concatenate([by_n[p] for p in perm[:k]])
        b_idx = np.concatenate([by_n[p] for p in perm[k:]])
        m_idx = np.concatenate([by_p[p] for p in rng.choice(up, km, replace=False)])
        a, c = _auc_fast(pos[m_idx], neg[b_idx]), _auc_fast(neg[a_idx], neg[b_idx])
        att.append(a)
        ctl.append(c)
        gaps.append(a - c)
        if len(up) >= 4:
            q = rng.permutation(up)
            h = len(up) // 2
            mm.append(_auc_fast(pos[np.concatenate([by_p[p] for p in q[:h]])], pos[np.concatenate([by_p[p] for p in q[h:]])]))
    ci = lambda x: [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]  # noqa: E731
    out = {"gap": float(np.mean(gaps)), "gap_ci": ci(gaps), "attack_auc": float(np.mean(att)), "attack_auc_ci": ci(att),
           "control_auc": float(np.mean(ctl)), "control_auc_ci": ci(ctl), "resamples": int(resamples),
           "patients_per_half": int(k), "member_patients_drawn": int(km),
           "split": "non-member patients in halves A and B; attack: k member patients vs B; control: A vs B"}
    if mm:
        out["member_control_auc"] = float(np.mean(mm))
        out["member_control_auc_ci"] = ci(mm)
    return out


def mirrors(s: "SliceSet") -> list["SliceSet"]:
    """The slice set mirrored left-right, up-down and transposed (image and mask together): the neighbours of the
    calibrated attack."""
    out = []
    for f in (lambda x: x[:, :, ::-1], lambda x: x[:, ::-1, :], lambda x: np.swapaxes(x, 1, 2)):
        out.append(SliceSet(np.ascontiguousarray(f(s.images)), np.ascontiguousarray(f(s.masks)), s.vendors, s.patients, s.cases, s.datasets))
    return out


def calibrated_scores(score, s: "SliceSet") -> np.ndarray:
    """The score of each real image minus the mean score of its mirror images."""
    return score(s) - np.mean([score(m) for m in mirrors(s)], axis=0)


def render_each(renderer, s: SliceSet, seeds: list[int], batch: int = 16) -> np.ndarray:
    """One independent render of every slice's mask (its vendor, its own seed), in batches of one vendor."""
    out = np.zeros(s.masks.shape, np.float32)
    for v in sorted(set(s.vendors)):
        idx = [i for i, x in enumerate(s.vendors) if x == v]
        for j in range(0, len(idx), batch):
            sel = idx[j:j + batch]
            out[sel] = renderer.render_framed(s.masks[sel], v, seed=[seeds[i] for i in sel])
    return out


def reconstruction_scores(renderer, s: SliceSet, seeds: int = 3, batch: int = 16, keep: list | None = None) -> np.ndarray:
    """Minus the smallest mean squared pixel distance between each real image and renders of its mask.
    ``keep``: a list that receives the renders (one (N, S, S) array a seed)."""
    best = np.full(len(s), np.inf)
    for k in range(seeds):
        out = render_each(renderer, s, [10_000 * (k + 1) + j for j in range(len(s))], batch)
        best = np.minimum(best, ((out - s.images) ** 2).reshape(len(s), -1).mean(1))
        if keep is not None:
            keep.append(out)
    return -best


COPY_PERCENTILE = 5.0


def same_patient_phase_distances(f: np.ndarray, s: "SliceSet") -> np.ndarray:
    """For each slice of a patient's first case (its ED, or its first frame): the distance to the closest slice of
    another case (phase or frame) of the same patient. ACDC's files name frames (``_frame01``), not phases."""
    import re

    cases = np.asarray(s.cases) if s.cases else np.array([""] * len(s))
    pats = np.asarray(s.patients)
    key = lambda c: (0 if re.search(r"_ed$", c, re.IGNORECASE) else 1, c)  # noqa: E731  ED first, else the first frame
    out = []
    for p in np.unique(pats):
        own = sorted(set(cases[pats == p]), key=key)
        if len(own) < 2:
            continue
        first, other = np.flatnonzero((pats == p) & (cases == own[0])), np.flatnonzero((pats == p) & (cases != own[0]))
        out.append(_dist(f[first], f[other]).min(1))
    return np.concatenate(out) if out else np.zeros(0)


def copies(real_f: np.ndarray, render_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each real image to its closest render, index of that render)."""
    d = _dist(real_f, render_f)
    j = d.argmin(1)
    return d[np.arange(len(d)), j], j


def copy_detection(members: "SliceSet", nonmembers: "SliceSet", member_renders: np.ndarray, nonmember_renders: np.ndarray,
                   space: str, device, top: int = 8) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """Module docstring, *Copies of training images*: (the fraction of member slices some render reproduces, its
    non-member control, the threshold and where it came from, the closest pairs; those pairs' images)."""
    fm, fn = features(members.images, space, device), features(nonmembers.images, space, device)
    rm = features(member_renders.reshape(-1, *member_renders.shape[-2:]), space, device)
    rn = features(nonmember_renders.reshape(-1, *nonmember_renders.shape[-2:]), space, device)
    pairs = np.concatenate([same_patient_phase_distances(fm, members), same_patient_phase_distances(fn, nonmembers)])
    if len(pairs) < 5:
        return {"error": "fewer than 5 same-patient ED/ES slice pairs: no copy threshold (give cases with both phases)"}, []
    tau = float(np.percentile(pairs, COPY_PERCENTILE))
    dm, jm = copies(fm, rm)
    dn, _ = copies(fn, rn)
    order = np.argsort(dm)[:top]
    flat = member_renders.reshape(-1, *member_renders.shape[-2:])
    return {"space": space, "threshold": tau, "threshold_from": f"{COPY_PERCENTILE:g}th percentile of {len(pairs)} same-patient ED→ES "
            "slice distances", "reproduced": float((dm < tau).mean()), "reproduced_n": int((dm < tau).sum()), "members": int(len(dm)),
            "nonmember_control": float((dn < tau).mean()), "nonmembers": int(len(dn)),
            "renders_per_slice": int(member_renders.shape[0]) if member_renders.ndim == 4 else 1,
            "median_distance_members": float(np.median(dm)), "median_distance_nonmembers": float(np.median(dn)),
            "closest": [{"member": int(i), "render": int(jm[i]), "distance": float(dm[i]), "copy": bool(dm[i] < tau)} for i in order]}, \
        [(members.images[i], flat[jm[i]]) for i in order]


def denoising_scores(renderer, s: SliceSet, levels=(0.1, 0.3, 0.5), seeds: int = 2, batch: int = 16) -> np.ndarray:
    """Minus the model's own training loss of each real image at fixed noise levels and fixed noises (step-wise models:
    renderers with ``denoising_loss``)."""
    if not hasattr(renderer, "denoising_loss"):
        raise CmrError(f"The denoising-loss attack needs a step-wise (diffusion or flow) model; '{renderer.name}' renders in one step.")
    out = np.zeros(len(s))
    for i in range(0, len(s), batch):
        sel = list(range(i, min(i + batch, len(s))))
        vendors = [renderer.resolve_vendor(s.vendors[j])[0] for j in sel]
        total = np.zeros(len(sel))
        for k in range(seeds):
            for lvl in levels:
                g = torch.Generator().manual_seed(1000 * k + int(lvl * 100))
                noise = torch.randn((len(sel), 1) + s.images.shape[1:], generator=g)
                total += renderer.denoising_loss(s.masks[sel], s.images[sel], vendors, lvl, noise)
        out[sel] = -(total / (seeds * len(levels)))
    return out


# -- the whole evaluation ----------------------------------------------------------------------

@dataclass
class Privacy:
    generator: dict
    members: dict  # patients and slices
    nonmembers: dict
    nearest: dict
    attacks: dict
    figure: str | None = None
    copies: dict | None = None  # copy detection: training slices some render reproduces, with its non-member control

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def split_members(cases, held_out_prefixes: list[str]):
    """(members, non-members) by case-id prefix: the held-out patients are the non-members."""
    if not held_out_prefixes:
        raise CmrError("A membership split needs the held-out patients: give --case (or use a model whose card names them).")
    hold = [c for c in cases if any(c.case_id.startswith(p) for p in held_out_prefixes)]
    train = [c for c in cases if not any(c.case_id.startswith(p) for p in held_out_prefixes)]
    if not hold:
        raise CmrError(f"No case matches the held-out patients {', '.join(held_out_prefixes)}; give the folder that holds them with --data.")
    if not train:
        raise CmrError("Every case is a held-out one: give the training data too with --data.")
    return train, hold


def _pairs_figure(path: str | Path, tops, bottoms, titles: list[str], flagged: list[bool], labels: tuple[str, str], title: str) -> Path:
    """PNG: image pairs in columns, ``tops`` above ``bottoms``, each column titled (red when flagged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmrstudio.io.common import atomic_path

    n = max(1, len(tops))
    fig, ax = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for k, (top, bottom, t, f) in enumerate(zip(tops, bottoms, titles, flagged)):
        ax[0, k].imshow(top, cmap="gray", vmin=0, vmax=1)
        ax[1, k].imshow(bottom, cmap="gray", vmin=0, vmax=1)
        ax[0, k].set_title(t, fontsize=7, color="red" if f else "black")
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    ax[0, 0].set_ylabel(labels[0], fontsize=8)
    ax[1, 0].set_ylabel(labels[1], fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def closest_pairs_figure(path: str | Path, synth: np.ndarray, train: np.ndarray, closest: list[dict], title: str) -> Path:
    """PNG: each closest synthetic image (top row) above its nearest training image (bottom row)."""
    return _pairs_figure(path, [synth[c["synthetic"]] for c in closest], [train[c["train"]] for c in closest],
                         [f"d={c['distance']:.3g}" + (" (!)" if c["flagged"] else "") for c in closest], [c["flagged"] for c in closest],
                         ("synthetic", "closest\ntraining"), title)


def copy_pairs_figure(path: str | Path, pairs, closest: list[dict], threshold: float, title: str) -> Path:
    """PNG: the closest render of a training mask (top row) above the training slice it is closest to (bottom row)."""
    return _pairs_figure(path, [r for _, r in pairs], [x for x, _ in pairs],
                         [f"d={c['distance']:.3g}" + (" copy" if c["copy"] else "") for c in closest], [c["copy"] for c in closest],
                         ("render", "training\nslice"), f"{title}; copy below d={threshold:.3g}")


def evaluate_privacy(cases, held_out: list[str], model=None, space: str = "inception", seeds: int = 3, max_members: int | None = None,
                     out: str | Path | None = None, device: str | None = None, seed: int = 0, **hq) -> Privacy:
    """Nearest-neighbour analysis and membership inference for one generator.

    ``cases``: real cases with masks, training patients and held-out ones; ``held_out``: case-id prefixes of
    the patients the model never saw. ``max_members`` caps the member slices (a seeded sample) to bound the time.
    """
    from cmrstudio.engine.factory import open_renderer

    if space not in SPACES:
        raise CmrError(f"--space {space!r} is not known; use one of {', '.join(SPACES)}.")
    train_c, hold_c = split_members(cases, held_out)
    r = open_renderer(model, device=device, **hq)
    members, nonmembers = slices_of(train_c, r), slices_of(hold_c, r)
    if len(members) < 2 or len(nonmembers) < 2:
        raise CmrError("Membership inference needs at least two heart slices of training patients and two of held-out patients.")
    attack_members = members
    if max_members and len(members) > max_members:
        attack_members = members.subset(sorted(np.random.default_rng(seed).choice(len(members), max_members, replace=False)))
    # synthetic images: renders of the held-out masks (what a user would make), one independent seed each
    synth = render_each(r, nonmembers, list(range(len(nonmembers))))
    ft, fs, fh = (features(x, space, r.device) for x in (members.images, synth, nonmembers.images))
    nn = nearest_neighbours(ft, members.patients, fs, fh, space=space)
    def run(name, score, **extra):
        pos, neg = score(attack_members), score(nonmembers)
        res = {**attack_summary(pos, neg), **extra}
        # within each dataset holding both: members and non-members differ in source as well as membership
        # (scanner, protocol, labelling), which an attack can pick up; the per-dataset AUC removes that
        by = {}
        for d in sorted(set(attack_members.datasets) & set(nonmembers.datasets)):
            p = pos[[i for i, x in enumerate(attack_members.datasets) if x == d]]
            n = neg[[i for i, x in enumerate(nonmembers.datasets) if x == d]]
            if len(p) >= 2 and len(n) >= 2:
                s = attack_summary(p, n)
                by[d] = {k: s[k] for k in ("auc", "auc_ci", "tpr_at_1pct_fpr", "members", "nonmembers")}
        res["by_dataset"] = by
        res["control"] = controlled(pos, neg, attack_members.patients, nonmembers.patients, seed=seed)
        attacks[name] = res

    attacks: dict = {}
    renders_m: list = []
    renders_n: list = []
    recon = lambda s, keep=None: reconstruction_scores(r, s, seeds, keep=keep)  # noqa: E731
    run("reconstruction", lambda s: recon(s, renders_m if s is attack_members else renders_n if s is nonmembers else None), seeds=seeds)
    if hasattr(r, "denoising_loss"):
        run("denoising_loss", lambda s: denoising_scores(r, s), levels=[0.1, 0.3, 0.5], seeds=2)
        run("denoising_loss_calibrated", lambda s: calibrated_scores(lambda x: denoising_scores(r, x), s), levels=[0.1, 0.3, 0.5], seeds=2,
            neighbours="mirrored left-right, up-down, transposed")
    else:
        run("reconstruction_calibrated", lambda s: calibrated_scores(lambda x: reconstruction_scores(r, x, 1), s), seeds=1,
            neighbours="mirrored left-right, up-down, transposed")
    copy, copy_pairs = copy_detection(attack_members, nonmembers, np.stack(renders_m), np.stack(renders_n), space, r.device)
    fig = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        fig = str(closest_pairs_figure(out / f"{r.name}_closest_pairs.png", synth, members.images, nn.closest,
                                       f"{r.name}: the synthetic images closest to a training image ({space} space)"))
        if copy_pairs:
            copy["figure"] = str(copy_pairs_figure(out / f"{r.name}_copies.png", copy_pairs, copy["closest"], copy["threshold"],
                                                   f"{r.name}: training slices (bottom) and the closest render of a training mask (top)"))
    summary = lambda s, c: {"patients": len(set(s.patients)), "slices": len(s), "cases": sorted({x.case_id for x in c})}  # noqa: E731
    return Privacy(r.describe(), {**summary(members, train_c), "attack_slices": len(attack_members)}, summary(nonmembers, hold_c),
                   nn.to_dict(), attacks, fig, copy)
