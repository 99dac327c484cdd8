"""A machine reader for real-vs-synthetic reader studies: a small CNN that says whether a slice is synthetic.

Trained on part of the data, it then answers a study's questions like a human reader (one record
per question, the same fields the study's store keeps), so :mod:`cmrstudio.study.stats` scores it
with the same statistics. A classifier that cannot beat chance on held-out slices is evidence that
the synthetic images carry no easy tell; one that can shows where human readers might learn one.

What the network sees: heart-centred 128×128 slices at 1.25 mm (the study frame), each slice
normalised on its own by its 0.5–99.5 percentiles, exactly as :mod:`cmrstudio.study.design` prepares
study items. This is applied to every image given to :func:`train_classifier` and :func:`classify`
(on study items, already normalised that way, it changes next to nothing), so the network cannot
learn a difference in intensity scaling that no reader ever sees.

Splits: :func:`train_classifier` holds out the *last* ``val_fraction`` of each class in the order
given; :func:`make_training_pairs` keeps each case's slices together, so the tail is whole cases.
To hold out patients, order (or build the pairs per) case list accordingly — the split is by index.

A trained classifier is a model like every other: ``NAME.safetensors`` beside a ``NAME.json`` card of
kind ``classifier`` with the weights' sha256, which :func:`load_classifier` checks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrstudio.errors import CmrError

SIZE = 128
SPACING_MM = 1.25
KIND = "classifier"
ARCHITECTURE = "RealSynthCNN"
PERCENTILES = (0.5, 99.5)
GAMMA_RANGE = (0.8, 1.25)
LABEL_NAMES = {0: "real", 1: "synthetic"}
MODES = ("single", "2afc", "both")
DEFAULT_NAME = "classifier"  # the model's name when a folder is given instead of a file


# -- the network -------------------------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    size: int = SIZE
    widths: tuple[int, ...] = (16, 32, 48, 64, 64)  # the first conv keeps full resolution, each next halves it
    groups: int = 4
    blur: bool = False  # see the image through a [1 2 1] x [1 2 1] / 16 blur first (a critic blind to period-2 patterns)

    def to_dict(self) -> dict:
        return {"size": int(self.size), "widths": [int(w) for w in self.widths], "groups": int(self.groups),
                **({"blur": True} if self.blur else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        cfg = cls(size=int(d.get("size", SIZE)), widths=tuple(int(w) for w in d.get("widths", cls.widths)),
                  groups=int(d.get("groups", cls.groups)), blur=bool(d.get("blur", False)))
        if not cfg.widths or any(w < 1 or w % cfg.groups for w in cfg.widths):
            raise ValueError(f"widths {list(cfg.widths)} must be positive multiples of groups {cfg.groups}")
        return cfg


class RealSynthCNN(nn.Module):
    """Conv 3×3 + GroupNorm + SiLU blocks (full resolution, then stride 2 each), global mean pooling,
    one linear logit: P(synthetic) = sigmoid(logit). About 85k parameters with the default widths.

    With ``cfg.blur`` the image is first blurred by a fixed [1 2 1] x [1 2 1] / 16 kernel (reflected at the border; a
    buffer that is not saved, so the weights are those of the network without it). The kernel is zero at the Nyquist
    frequency of either axis, so the gradient of the logit with respect to the image has no power there at all: as a
    GAN's critic it can neither reward nor punish a period-2 grid in a generator's output, which a stride-2 conv's
    gradient can do. The machine reader keeps it off, so that it still sees such grids."""

    def __init__(self, cfg: ClassifierConfig | None = None):
        super().__init__()
        self.cfg = cfg or ClassifierConfig()
        layers: list[nn.Module] = []
        c_in = 1
        for i, w in enumerate(self.cfg.widths):
            layers += [nn.Conv2d(c_in, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.GroupNorm(self.cfg.groups, w), nn.SiLU()]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("blur", (k[:, None] * k[None, :] / 16.0)[None, None] if self.cfg.blur else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, N, N) in [0, 1] -> logits (B,)."""
        if self.blur is not None:
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.blur.to(x.dtype))
        h = self.features(x * 2.0 - 1.0)
        return self.head(h.mean(dim=(2, 3)))[:, 0]


def count_parameters(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# -- inputs ------------------------------------------------------------------------------------------
def _images(images, what: str = "The images") -> np.ndarray:
    """(N, 128, 128) finite float32, or one sentence saying what is wrong."""
    try:
        a = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise CmrError(f"{what} cannot be read as an array of numbers ({exc}); give (N, {SIZE}, {SIZE}) slices in [0, 1].") from None
    if a.size == 0:
        raise CmrError(f"{what} are empty; give at least one {SIZE}×{SIZE} slice.")
    if a.ndim != 3 or a.shape[1:] != (SIZE, SIZE):
        raise CmrError(f"{what} have shape {tuple(a.shape)}, but the classifier reads (N, {SIZE}, {SIZE}) slices: "
                       f"heart-centred crops at {SPACING_MM} mm, as reader studies hold them.")
    if not np.all(np.isfinite(a)):
        raise CmrError(f"{what} hold non-finite values (NaN or infinity); fix the images before classifying them.")
    return a


def _labels(labels, n: int) -> np.ndarray:
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:  # pragma: no cover - np.asarray accepts nearly anything
        raise CmrError(f"The labels cannot be read as an array ({exc}); give 0 (real) or 1 (synthetic) per image.") from None
    if y.ndim != 1 or len(y) != n:
        raise CmrError(f"There are {n} images but the labels have shape {tuple(y.shape)}; give one label, 0 (real) or 1 (synthetic), per image.")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise CmrError(f"The labels are of type {y.dtype}; give whole numbers, 0 (real) or 1 (synthetic).")
    y = y.astype(np.int64)
    bad = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad:
        raise CmrError(f"The labels hold {bad[0]}; each label must be 0 (real) or 1 (synthetic).")
    for k, name in LABEL_NAMES.items():
        if not np.any(y == k):
            raise CmrError(f"All {n} labels are {LABEL_NAMES[1 - k]}; a real-vs-synthetic classifier needs {name} images too.")
    return y


def standardise(images: np.ndarray) -> np.ndarray:
    """Each slice to [0, 1] by its own 0.5–99.5 percentiles (as reader-study items are prepared)."""
    a = np.asarray(images, dtype=np.float32)
    lo, hi = np.percentile(a, PERCENTILES, axis=(1, 2), keepdims=True)
    return np.clip((a - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _resize(images: np.ndarray) -> np.ndarray:
    if images.shape[1:] == (SIZE, SIZE):
        return images
    from scipy import ndimage

    n, y, x = images.shape
    out = ndimage.zoom(images, (1, SIZE / y, SIZE / x), order=1)[:, :SIZE, :SIZE]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# -- training data -----------------------------------------------------------------------------------
def make_training_pairs(cases: list, renderer, seeds_per_slice: int = 1, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real framed heart slices and the renderer's synthetic image of each one's framed mask.

    Returns ``(images (N, 128, 128) float32 in [0, 1], labels (N,) int64: 0 real, 1 synthetic)``.
    Every synthetic image has its own seed (drawn from ``rng_seed``); with ``seeds_per_slice`` k,
    each real slice is included k times so the classes stay balanced. Images are grouped by case
    (a case's real slices, then its synthetic ones), so a split by index keeps cases whole.
    A renderer with another frame size is resized to 128×128 (both kinds alike).
    """
    from cmrstudio.data.slices import heart_slices

    if not cases:
        raise CmrError("No cases were given; a machine reader is trained on real cases with an image and a mask.")
    if int(seeds_per_slice) < 1:
        raise CmrError(f"seeds_per_slice {seeds_per_slice} must be at least 1 (synthetic images per real slice).")
    rng = np.random.default_rng(rng_seed)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for case, real, masks in heart_slices(cases, renderer):
        n = len(masks)
        for _ in range(int(seeds_per_slice)):
            seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]
            syn = np.concatenate([renderer.render_framed(masks[i:i + 16], case.vendor, seed=seeds[i:i + 16]) for i in range(0, n, 16)])
            images += [standardise(_resize(real)), standardise(_resize(np.asarray(syn, dtype=np.float32)))]
            labels += [np.zeros(n, np.int64), np.ones(n, np.int64)]
    if not images:
        raise CmrError(f"None of the {len(cases)} cases has an image, a mask and heart slices; give real cases with LV/MYO/RV masks.")
    return np.concatenate(images), np.concatenate(labels)


# -- metrics -----------------------------------------------------------------------------------------
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` == 1 (Mann–Whitney, ties count half); NaN with one class."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _metrics(p: np.ndarray, y: np.ndarray) -> dict:
    return {"accuracy": float(np.mean((p >= 0.5) == (y == 1))), "auc": auc(p, y), "n": int(len(y))}


def _split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``val_fraction`` of each class (in the given order) for validation, at least one of each."""
    train, val = [], []
    for k, name in LABEL_NAMES.items():
        idx = np.flatnonzero(labels == k)
        n_val = int(round(len(idx) * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0:
            n_val = max(n_val, 1)
            if len(idx) - n_val < 1:
                raise CmrError(f"There are only {len(idx)} {name} images; holding out {val_fraction:.0%} for validation leaves none "
                               "to train on — give more images or a smaller val_fraction.")
        train.append(idx[: len(idx) - n_val])
        val.append(idx[len(idx) - n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# -- training ----------------------------------------------------------------------------------------
def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips and a small gamma, per image; x (B, 1, N, N) in [0, 1]."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=g) < 0.5
    flip_v = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1]), generator=g))
    return x.clamp(1e-6, 1.0) ** gamma


@torch.inference_mode()
def _probabilities(net: nn.Module, images01: np.ndarray, batch: int) -> np.ndarray:
    net.eval()
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images01), batch):
        x = torch.from_numpy(np.ascontiguousarray(images01[i:i + batch]))[:, None].to(device)
        out.append(torch.sigmoid(net(x).float()).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def train_classifier(images, labels, steps: int = 300, batch: int = 32, seed: int = 0, val_fraction: float = 0.2,
                     progress: Callable[[dict], Any] | None = None, lr: float = 1e-3,
                     config: ClassifierConfig | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the real-vs-synthetic CNN (Adam, class-balanced batches, flips and gamma augmentation).

    The held-out split is by index (see the module notes). ``progress``, if given, is called after
    every step with ``{"step", "steps", "loss"}``; returning ``False`` stops training there (the net
    trained so far is returned and ``info["steps_done"]`` says how far it got).
    Returns the net (eval mode, CPU) and ``info``: counts, the options, train and validation
    accuracy and AUC (validation ones ``None`` when ``val_fraction`` is 0), loss and time.
    """
    x_all = standardise(_images(images))
    y_all = _labels(labels, len(x_all))
    steps, batch = int(steps), int(batch)
    if steps < 1:
        raise CmrError(f"steps {steps} must be at least 1.")
    if batch < 2:
        raise CmrError(f"batch {batch} must be at least 2 (one real and one synthetic image a step).")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise CmrError(f"val_fraction {val_fraction} must be at least 0 and below 1 (the share of images held out).")
    tr, va = _split(y_all, float(val_fraction))
    cfg = config or ClassifierConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = RealSynthCNN(cfg)
    g = torch.Generator().manual_seed(int(seed) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=float(lr))
    x_t = torch.from_numpy(x_all)[:, None]
    pools = [torch.from_numpy(tr[y_all[tr] == k]) for k in (0, 1)]
    half = (batch // 2, batch - batch // 2)
    t0 = time.perf_counter()
    losses: list[float] = []
    done = 0
    net.train()
    for step in range(1, steps + 1):
        pick = torch.cat([pool[torch.randint(len(pool), (m,), generator=g)] for pool, m in zip(pools, half)])
        xb = _augment(x_t[pick], g)
        yb = torch.cat([torch.zeros(half[0]), torch.ones(half[1])])
        loss = F.binary_cross_entropy_with_logits(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done = step
        if progress is not None and progress({"step": step, "steps": steps, "loss": losses[-1]}) is False:
            break
    seconds = time.perf_counter() - t0
    net.eval()
    p_tr = _probabilities(net, x_all[tr], 64)
    m_tr = _metrics(p_tr, y_all[tr])
    m_va = _metrics(_probabilities(net, x_all[va], 64), y_all[va]) if len(va) else None
    tail = losses[-min(20, len(losses)):]
    info = {
        "architecture": {"name": ARCHITECTURE, "options": cfg.to_dict(), "parameters": count_parameters(net)},
        "steps": steps, "steps_done": done, "batch": batch, "lr": float(lr), "seed": int(seed), "val_fraction": float(val_fraction),
        "augmentation": {"flips": "horizontal and vertical", "gamma": list(GAMMA_RANGE)},
        "n_train": int(len(tr)), "n_val": int(len(va)),
        "n_train_real": int(np.sum(y_all[tr] == 0)), "n_train_synthetic": int(np.sum(y_all[tr] == 1)),
        "n_val_real": int(np.sum(y_all[va] == 0)), "n_val_synthetic": int(np.sum(y_all[va] == 1)),
        "train_accuracy": m_tr["accuracy"], "train_auc": m_tr["auc"],
        "val_accuracy": m_va["accuracy"] if m_va else None, "val_auc": m_va["auc"] if m_va else None,
        "final_loss": float(np.mean(tail)), "seconds": round(seconds, 2),
    }
    return net, info


# -- files -------------------------------------------------------------------------------------------
def _name_and_folder(path) -> tuple[Path, str]:
    from cmrstudio.models.checkpoint import CARD_SUFFIX, WEIGHTS_SUFFIX

    p = Path(path).expanduser()
    if p.is_dir():
        return p, DEFAULT_NAME
    name = p.name
    for suf in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    if not name or name.startswith("."):
        raise CmrError(f"{p} is not a usable model name; give a path like models/reader.safetensors.")
    return p.parent, name


def save_classifier(net: nn.Module, info: dict, path) -> Path:
    """Write ``NAME.safetensors`` and then its card ``NAME.json`` (kind ``classifier``), each atomically.

    ``path`` is the weights file, the card, the bare ``folder/NAME``, or an existing folder (the model is then
    named ``classifier``); returns the card's path
    (what :func:`load_classifier` and ``--model`` take). The card holds the architecture, the
    training counts and options, the measured train/validation metrics and the weights' sha256;
    ``info["data"]`` (e.g. which datasets and cases), if given, is kept as the card's ``data``; any other
    keys the caller adds (e.g. ``renderer``, ``train``) are kept in the card's ``training``.
    """
    from cmrstudio.engine.device import hardware
    from cmrstudio.models.checkpoint import save_model

    if not isinstance(net, RealSynthCNN):
        raise CmrError(f"Only a classifier made by train_classifier can be saved here, not a {type(net).__name__}.")
    folder, name = _name_and_folder(path)
    info = dict(info or {})
    training_keys = ("steps", "steps_done", "batch", "lr", "seed", "val_fraction", "augmentation", "seconds", "final_loss",
                     "n_train", "n_val", "n_train_real", "n_train_synthetic", "n_val_real", "n_val_synthetic")
    card = {
        "kind": KIND,
        "architecture": {"name": ARCHITECTURE, "options": net.cfg.to_dict(), "parameters": count_parameters(net)},
        "task": "P(synthetic) of one cardiac MRI slice: 0 real, 1 synthetic",
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "frame": {"size": SIZE, "spacing_mm": SPACING_MM},
        "input": f"each slice normalised to [0, 1] by its own {PERCENTILES[0]}–{PERCENTILES[1]} percentiles, as reader-study items",
        "training": {**{k: info[k] for k in training_keys if k in info}, "iterations": info.get("steps_done", info.get("steps")),
                     "hardware": hardware(torch.device("cpu"))},
        "metrics": {k: info.get(k) for k in ("train_accuracy", "train_auc", "val_accuracy", "val_auc")},
    }
    if "data" in info:
        card["data"] = info["data"]
    # anything else the caller recorded (the renderer, the training folders, ...) stays with the training record
    metric_keys = tuple(card["metrics"])
    card["training"].update({k: v for k, v in info.items()
                             if k not in training_keys + metric_keys + ("architecture", "data", "iterations", "hardware")})
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return save_model(folder, name, state, card).card_path


def load_classifier(path) -> tuple[torch.nn.Module, dict]:
    """A saved classifier (its card, weights, ``folder/NAME`` or folder path) -> (net in eval mode on the CPU, its card).

    The weights must match the sha256 in the card; a damaged, replaced or mismatched file is refused
    with one sentence.
    """
    from cmrstudio.models.checkpoint import load_state, read_card, verify

    p = Path(path).expanduser()
    info = read_card(p / f"{DEFAULT_NAME}.json" if p.is_dir() else p)
    if info.kind != KIND:
        raise CmrError(f"The model '{info.name}' ({info.card_path}) is a {info.kind} model, not a real-vs-synthetic classifier.")
    verify(info)
    arch = info.card["architecture"]
    if arch.get("name", ARCHITECTURE) != ARCHITECTURE:
        raise CmrError(f"The card {info.card_path} describes a {arch.get('name')!r} network, which this cmrstudio cannot build.")
    try:
        net = RealSynthCNN(ClassifierConfig.from_dict(arch.get("options", {})))
    except (TypeError, ValueError, AttributeError) as exc:
        raise CmrError(f"The card {info.card_path} describes a classifier cmrstudio cannot build ({exc}); retrain it.") from None
    state = load_state(info.weights_path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CmrError(f"The weights {info.weights_path} do not fit the classifier in their card ({first}); retrain or re-copy the pair.") from None
    return net.eval(), info.card


# -- reading ------------------------------------------------------------------------------------------
def classify(net: nn.Module, images01: np.ndarray, batch: int = 64) -> np.ndarray:
    """P(synthetic) for each (N, 128, 128) slice, as an (N,) float array (slices are standardised first)."""
    if int(batch) < 1:
        raise CmrError(f"batch {batch} must be at least 1.")
    return _probabilities(net, standardise(_images(images01)), int(batch))


def _confidence(strength: float) -> int:
    """strength in [0, 1] (0 guessing, 1 certain) -> 1..5."""
    return int(min(5, max(1, math.ceil(round(strength * 5, 9)))))


@dataclass
class MachineReaderResult:
    """The machine reader's answers and the probabilities behind them."""

    reader: str
    mode: str
    answers: list[dict]
    p_synthetic: dict[str, float]  # per item id
    seconds_per_image: float
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"reader": self.reader, "mode": self.mode, "answers": self.answers, "p_synthetic": self.p_synthetic,
                "seconds_per_image": self.seconds_per_image, "model": self.model}


def machine_read(net: nn.Module, items: list[tuple[str, np.ndarray]], mode: str = "single",
                 pairs: list[tuple[str, str, str]] | None = None, reader: str = "machine (classifier)",
                 model: dict | None = None) -> MachineReaderResult:
    """Answer a study's questions (see :func:`machine_answers`) and keep the probabilities."""
    if mode not in MODES:
        raise CmrError(f"Mode {mode!r} is not known; use one of {', '.join(MODES)}.")
    if not str(reader).strip():
        raise CmrError("The machine reader needs a name, so its answers can be told apart from the human readers'.")
    items = list(items or [])
    if not items:
        raise CmrError("No items were given; the machine reader answers a study's items (item id, 128×128 image).")
    try:
        ids = [str(i) for i, _ in items]
    except (TypeError, ValueError):
        raise CmrError("Items must be (item id, image) pairs, e.g. list(study.images.items()).") from None
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CmrError(f"The item id {dup!r} is given twice; every item needs its own id.")
    images = np.empty((len(items), SIZE, SIZE), np.float32)
    for k, (iid, (_, img)) in enumerate(zip(ids, items)):
        a = np.asarray(img)
        if a.shape != (SIZE, SIZE):
            raise CmrError(f"The image of item {iid} has shape {a.shape}, but the classifier reads {SIZE}×{SIZE} slices "
                           f"(heart-centred crops at {SPACING_MM} mm, as reader studies hold them).")
        images[k] = _images(a[None], f"The image of item {iid}")[0]
    if mode in ("2afc", "both"):
        if not pairs:
            raise CmrError(f"Mode {mode} needs pairs (pair id, left item id, right item id), e.g. from the study's design.")
        known = set(ids)
        for pr in pairs:
            if len(pr) != 3:
                raise CmrError(f"The pair {pr!r} must be (pair id, left item id, right item id).")
            for side in pr[1:]:
                if str(side) not in known:
                    raise CmrError(f"The pair {pr[0]!r} names item {side!r}, which is not among the items given.")
    t0 = time.perf_counter()
    p = classify(net, images)
    per_image = (time.perf_counter() - t0) / len(images)
    prob = {iid: float(v) for iid, v in zip(ids, p)}
    out: list[dict] = []
    if mode in ("single", "both"):
        for iid in ids:
            v = prob[iid]
            out.append({"reader": reader, "item": iid, "mode": "single", "answer": "synthetic" if v >= 0.5 else "real",
                        "confidence": _confidence(abs(v - 0.5) * 2), "seconds": float(per_image), "p_synthetic": v})
    if mode in ("2afc", "both"):
        for pid, left, right in pairs:
            pl, pr_ = prob[str(left)], prob[str(right)]
            out.append({"reader": reader, "item": str(pid), "mode": "2afc", "answer": "left" if pl < pr_ else "right",
                        "confidence": _confidence(abs(pl - pr_)), "seconds": float(2 * per_image),
                        "p_synthetic_left": pl, "p_synthetic_right": pr_})
    return MachineReaderResult(str(reader), mode, out, prob, float(per_image), dict(model or {}))


def machine_answers(net: nn.Module, items: list[tuple[str, np.ndarray]], mode: str = "single",
                    pairs: list[tuple[str, str, str]] | None = None, reader: str = "machine (classifier)") -> list[dict]:
    """The machine reader's answer records, one per question, in the fields a human reader's answers have.

    ``single``: per (item id, framed image), ``answer`` "synthetic" when P(synthetic) >= 0.5, else
    "real"; ``confidence`` 1–5 = ceil(|p − 0.5| × 10) clipped to 1–5; ``seconds`` the inference time
    per image; ``p_synthetic`` p.
    ``2afc``: per (pair id, left id, right id), ``answer`` "left" when the left image looks more real
    (lower P(synthetic)), else "right"; ``confidence`` = ceil(|p_left − p_right| × 5) clipped to 1–5;
    ``seconds`` the time for both images. ``both``: the single records, then the 2AFC ones.
    """
    return machine_read(net, items, mode, pairs, reader).answers
