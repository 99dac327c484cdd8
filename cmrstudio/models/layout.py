"""The learned prior of background tissue classes: probabilistic PCA over heart-centred layouts.

A layout is what :mod:`cmrstudio.data.scene` derives from a real slice: the fraction of each
background tissue class (outside, dark, mid-dark, mid-bright, bright) on cells of
``LAYOUT_FACTOR`` pixels. Around the heart, a window of ``cells`` × ``cells`` cells (480 mm at the
live frame's 1.25 mm) holds nine maps: those five, the heart's three label fractions and the scan's
extent (1 inside the scan's own grid, 0 in padding). Probabilistic PCA (Tipping & Bishop, 1999)
models the 9 × cells² vector as ``W z + mu + noise`` with ``z ~ N(0, I)`` of ``k`` dimensions.

* **Fully synthetic renders** draw ``z`` from its posterior given the painted heart and the scan's
  extent (:meth:`LayoutPCA.sample`): a body outline, lungs, liver and fat that fit where the heart
  is and how big it is, different for every seed. A sample is a combination of the training
  layouts' principal components, never one patient's layout.
* **Training** conditions the image models on each real layout *projected* onto the same ``k``
  components (:meth:`LayoutPCA.project`), so they learn from layouts of exactly the kind the prior
  produces, not from crisper ones they would never be given.

The model is a few matrices (safetensors) and a card of kind ``layout``; fitting takes seconds.

**The fine prior** (:class:`FineLayout`, preset ``layout-fine`` of ``cmrstudio train flow``) adds what
10 mm cells leave out: the crisp shapes of the chest wall, fat, lung edges and liver, on cells of
``FINE_FACTOR`` frame pixels (2.5 mm). It is a small flow-matching U-Net over the five classes given
the heart's label fractions, the scan's extent and a coarse layout on those cells; trained on real
slices' own classes (the coarse layout: their PCA projection), it renders from a PCA sample. Each cell
takes its most likely class. Scene models trained on the slices' own fine classes (``--layout-prior``
naming a fine prior) render fully synthetic scenes from it.

**A layout bank** (:class:`LayoutBank`, ``cmrstudio train layout-bank``) is a prior by example: the fine
tissue classes of whole real scenes (each slice's own, as the scene models are trained on), keyed by
their heart. A render takes, for its seed, one of the ``k`` scenes whose heart overlaps the painted
one most (Dice of the label fractions on 5 mm cells in a 160 mm window around each heart's centre),
shifted so the two hearts' centres meet; where that scan ends and the painted one does not, the bank's
fallback prior (a fine prior) fills in. A body layout from a real scan (classes on 2.5 mm cells, no
pixel) is more like a scan than a sampled one. A bank carries its scans' body layouts, so it goes only
where those scans may go: none is shipped, and ``train layout-bank`` builds one from a site's own scans.
The bands' thresholds of a bank scene come from its heart frame, not the whole scan. Each scene's class map is
stored zlib-compressed (long runs of one class: about a tenth of the raw size) and unpacked when a seed picks it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cmrstudio.data.scene import LAYOUT_FACTOR, N_HEART, N_LAYOUT, heart_onehot

N_MAPS = N_LAYOUT + N_HEART + 1  # tissue fractions, heart fractions, scan extent
FINE_FACTOR = 2  # frame pixels per cell of the fine prior (2.5 mm at 1.25 mm)


@dataclass
class LayoutConfig:
    cells: int = 48  # window of cells around the heart
    factor: int = LAYOUT_FACTOR  # frame pixels per cell
    components: int = 32
    heart_noise: float = 16.0  # the painted heart's observation noise, in units of the residual SD: lower = layouts follow the heart more
    extent_noise: float = 8.0  # likewise for the scan's extent (its edges are enforced after sampling anyway)
    temperature: float = 1.0  # scale of the posterior spread when sampling

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LayoutConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def window_origin(centre_rc: tuple[float, float], size: int, cfg: LayoutConfig) -> tuple[int, int]:
    """The window's first cell in the scene's cell grid: centred on the heart, whole cells."""
    half = cfg.cells // 2
    return int(np.floor(centre_rc[0] / cfg.factor)) - half, int(np.floor(centre_rc[1] / cfg.factor)) - half


def cell_maps(classes: np.ndarray | None, mask: np.ndarray, inside: np.ndarray, origin: tuple[int, int], cfg: LayoutConfig) -> np.ndarray:
    """(N_MAPS, cells, cells) fractions of the window at ``origin`` (cells) over a scene's pixel maps (S, S).
    Cells beyond the scene are outside the scan (tissue class 'outside'). ``classes`` None: tissue maps zero."""
    f, n = cfg.factor, cfg.cells
    s = mask.shape[-1]
    cells_s = s // f
    out = np.zeros((N_MAPS, n, n), np.float32)
    out[0] = 1.0  # outside, until the scene says otherwise
    r0, c0 = origin
    rs, re = max(0, r0), min(cells_s, r0 + n)
    cs, ce = max(0, c0), min(cells_s, c0 + n)
    if rs >= re or cs >= ce:
        return out
    px = np.s_[rs * f:re * f, cs * f:ce * f]
    h, w = re - rs, ce - cs

    def pool(a):  # (..., h*f, w*f) -> (..., h, w) means
        return a.reshape(a.shape[:-2] + (h, f, w, f)).mean(axis=(-1, -3))

    win = np.s_[rs - r0:re - r0, cs - c0:ce - c0]
    if classes is not None:
        onehot = (classes[px][None] == np.arange(N_LAYOUT, dtype=classes.dtype)[:, None, None]).astype(np.float32)
        out[:N_LAYOUT][(slice(None),) + win] = pool(onehot)
    else:
        out[:N_LAYOUT][(slice(None),) + win] = 0.0
    out[N_LAYOUT:N_LAYOUT + N_HEART][(slice(None),) + win] = pool(heart_onehot(mask[px]))
    out[-1][win] = pool(np.asarray(inside[px], np.float32))
    return out


class LayoutPCA:
    """Probabilistic PCA of heart-centred layout windows (see the module notes)."""

    def __init__(self, cfg: LayoutConfig, mean: np.ndarray, components: np.ndarray, eigvals: np.ndarray, noise_var: float):
        self.cfg = cfg
        self.mean = np.asarray(mean, np.float64)  # (D,)
        self.U = np.asarray(components, np.float64)  # (k, D), orthonormal rows
        self.eigvals = np.asarray(eigvals, np.float64)  # (k,)
        self.noise_var = float(noise_var)
        self.W = self.U.T * np.sqrt(np.clip(self.eigvals - self.noise_var, 1e-12, None))  # (D, k)
        n = cfg.cells * cfg.cells
        self.layout_dims = np.arange(N_LAYOUT * n)
        self.obs_dims = np.arange(N_LAYOUT * n, N_MAPS * n)

    # -- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, vectors: np.ndarray, cfg: LayoutConfig) -> "LayoutPCA":
        """Fit on (N, D) window vectors (:func:`cell_maps` flattened)."""
        x = np.asarray(vectors, np.float64)
        mean = x.mean(0)
        xc = x - mean
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        ev = s ** 2 / max(1, len(x) - 1)
        k = min(cfg.components, len(ev) - 1)
        noise = float(ev[k:].sum() / max(1, x.shape[1] - k))  # the ML residual variance of PPCA, over all dimensions
        return cls(cfg, mean, vt[:k], ev[:k], noise)

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.astype(np.float32), "components": self.U.astype(np.float32),
                "eigvals": self.eigvals.astype(np.float32), "noise_var": np.array([self.noise_var], np.float32)}

    @classmethod
    def from_state(cls, cfg: LayoutConfig, state: dict) -> "LayoutPCA":
        return cls(cfg, state["mean"], state["components"], state["eigvals"], float(np.asarray(state["noise_var"]).reshape(-1)[0]))

    @property
    def parameters(self) -> int:
        return int(self.U.size + self.mean.size + self.eigvals.size + 1)

    @property
    def factor(self) -> int:
        """Frame pixels per cell of the layouts it makes."""
        return int(self.cfg.factor)

    def scene_sample(self, mask: np.ndarray, inside: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        """A whole scene's layout (N_LAYOUT, S/f, S/f) for the painted labels and the scan's extent (S, S)."""
        return scene_layout(self, mask, inside, seed)

    # -- use ---------------------------------------------------------------------------------------
    def _posterior(self, x_obs: np.ndarray, dims: np.ndarray, noise: np.ndarray | float):
        """Mean and covariance of z given x[dims] with per-dimension observation noise variances."""
        w = self.W[dims]
        inv = 1.0 / np.broadcast_to(np.asarray(noise, np.float64), (len(dims),))
        m = w.T @ (w * inv[:, None]) + np.eye(w.shape[1])
        cov = np.linalg.inv(m)
        mu = cov @ (w.T @ ((x_obs - self.mean[dims]) * inv))
        return mu, cov

    def _layout(self, z: np.ndarray) -> np.ndarray:
        n = self.cfg.cells
        lay = (self.W[self.layout_dims] @ z + self.mean[self.layout_dims]).reshape(N_LAYOUT, n, n)
        lay = np.clip(lay, 0.0, None) + 1e-4
        return (lay / lay.sum(0, keepdims=True)).astype(np.float32)

    def project(self, maps: np.ndarray) -> np.ndarray:
        """A real window's (N_MAPS, cells, cells) maps -> its layout as the prior can express it (5, cells, cells)."""
        x = np.asarray(maps, np.float64).reshape(-1)
        mu, _ = self._posterior(x, np.arange(x.size), self.noise_var)
        return self._layout(mu)

    def sample(self, heart_and_extent: np.ndarray, seed: int) -> np.ndarray:
        """(N_HEART + 1, cells, cells) heart fractions and scan extent -> a layout (5, cells, cells) for ``seed``."""
        cfg = self.cfg
        x = np.asarray(heart_and_extent, np.float64).reshape(-1)
        n = cfg.cells * cfg.cells
        noise = np.r_[np.full(N_HEART * n, self.noise_var * cfg.heart_noise ** 2), np.full(n, self.noise_var * cfg.extent_noise ** 2)]
        mu, cov = self._posterior(x, self.obs_dims, noise)
        rng = np.random.default_rng(int(seed) + 7_000_003)
        z = mu + cfg.temperature * np.linalg.cholesky(cov + 1e-9 * np.eye(len(mu))) @ rng.standard_normal(len(mu))
        lay = self._layout(z)
        outside = x[-n:].reshape(cfg.cells, cfg.cells) < 0.5  # beyond the scan's own grid: nothing but 'outside'
        lay[:, outside] = 0.0
        lay[0, outside] = 1.0
        return lay


def scene_layout(prior: LayoutPCA, mask: np.ndarray, inside: np.ndarray, seed: int, centre_rc: tuple[float, float] | None = None) -> np.ndarray:
    """A fully synthetic layout for a whole scene: (N_LAYOUT, S/f, S/f) fractions, sampled around the painted heart.
    Cells beyond the prior's window are outside the body."""
    cfg = prior.cfg
    f, s = cfg.factor, mask.shape[-1]
    if centre_rc is None:
        centre_rc = heart_centre(mask)
    origin = window_origin(centre_rc, s, cfg)
    maps = cell_maps(None, mask, inside, origin, cfg)
    lay = prior.sample(maps[N_LAYOUT:], seed)
    return paste_window(lay, origin, s // f)


def paste_window(layout: np.ndarray, origin: tuple[int, int], cells_s: int) -> np.ndarray:
    """A window's layout put into a scene's cell grid; cells beyond it are outside the body."""
    n = layout.shape[-1]
    out = np.zeros((N_LAYOUT, cells_s, cells_s), np.float32)
    out[0] = 1.0
    r0, c0 = origin
    rs, re = max(0, r0), min(cells_s, r0 + n)
    cs, ce = max(0, c0), min(cells_s, c0 + n)
    if rs < re and cs < ce:
        out[:, rs:re, cs:ce] = layout[:, rs - r0:re - r0, cs - c0:ce - c0]
    return out


class FineLayout:
    """The fine tissue-class prior (see the module notes): a flow-matching network over the classes on ``FINE_FACTOR``-pixel
    cells, refining a coarse prior's sample. Seeds fix both the coarse sample and the network's noise."""

    def __init__(self, info, net, coarse: LayoutPCA, steps: int | None = None):
        import threading

        self.info = info
        self.net = net
        self.coarse = coarse
        self.steps = int(steps or (info.card.get("sampling") or {}).get("steps", 4))
        self.factor = fine_cell_px(info)
        self.temperature = float((info.card.get("sampling") or {}).get("temperature", 1.0))  # the starting noise's scale
        self.heart_classes = {k: int(v) for k, v in (info.card["conditioning"].get("heart_classes") or {}).items()}
        self._lock = threading.Lock()

    def scene_sample(self, mask: np.ndarray, inside: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        """A whole scene's classes as one-hot fractions (N_LAYOUT, S/f, S/f) for the painted labels and the scan's extent (S, S)."""
        import torch

        from cmrstudio.data.dataset import fine_layout_condition
        from cmrstudio.data.scene import upsample_layout
        from cmrstudio.models.sampling import noise_for, run_to_end, sample

        f, s = self.factor, mask.shape[-1]
        cells = s // f
        coarse = upsample_layout(self.coarse.scene_sample(mask, inside, vendor_index, seed), (cells, cells))
        cond = torch.from_numpy(fine_layout_condition(heart_onehot(mask), np.asarray(inside, np.float32), coarse, f))[None]
        noise = noise_for(int(seed) + 7_000_019, cells, 1, N_LAYOUT) * self.temperature
        with self._lock, torch.inference_mode():
            frac = run_to_end(sample(self.net, "flow", cond, torch.tensor([int(vendor_index)]), noise, self.steps, guidance=1.0))[0]
        cls = frac.argmax(0)
        heart = cond[0, :N_HEART].numpy()
        label = np.concatenate([heart, 1 - heart.sum(0, keepdims=True)]).argmax(0)  # each cell's commonest label (ties: the heart's)
        for k, name in enumerate(("LV", "MYO", "RV")):  # the painted structures take their labels' usual classes
            if name in self.heart_classes:
                cls[label == k] = self.heart_classes[name]
        cls[cond[0, N_HEART].numpy() < 0.5] = 0  # beyond the scan's own grid: nothing but 'outside'
        return (cls[None] == np.arange(N_LAYOUT)[:, None, None]).astype(np.float32)


BANK_KEY_PX = 128  # the heart window a bank's key covers, in frame pixels (160 mm at 1.25 mm)
BANK_KEY_POOL = 4  # frame pixels per key cell
BEYOND_SCAN = 255  # a bank scene's pixels beyond its own scan: unknown, not 'outside' the body


def heart_centre(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) of the painted labels' centroid in a scene (S, S); the scene's centre when nothing is painted."""
    pts = np.argwhere(np.asarray(mask) > 0)
    s = mask.shape[-1]
    return tuple(pts.mean(0)) if len(pts) else ((s - 1) / 2, (s - 1) / 2)


def heart_key(mask: np.ndarray) -> np.ndarray:
    """A scene's heart as the bank compares it: LV, MYO and RV fractions on BANK_KEY_POOL-px cells of a BANK_KEY_PX window
    centred on the heart (zero beyond the scene), flattened."""
    n, p = BANK_KEY_PX, BANK_KEY_POOL
    r0, c0 = (int(round(c)) - n // 2 for c in heart_centre(mask))
    win = np.zeros((n, n), np.uint8)
    s0, s1 = mask.shape
    rs, re, cs, ce = max(0, r0), min(s0, r0 + n), max(0, c0), min(s1, c0 + n)
    if rs < re and cs < ce:
        win[rs - r0:re - r0, cs - c0:ce - c0] = mask[rs:re, cs:ce]
    return heart_onehot(win).reshape(N_HEART, n // p, p, n // p, p).mean(axis=(2, 4)).reshape(-1).astype(np.float32)


def pack_classes(classes: np.ndarray) -> np.ndarray:
    """One bank entry's class map (2-D uint8) as zlib-compressed bytes (1-D uint8): class maps are long runs of one class,
    so they shrink about ninefold (a bank of 1089 slices: 108 MB raw, 12 MB packed)."""
    return np.frombuffer(zlib.compress(np.ascontiguousarray(classes, np.uint8).tobytes(), 6), np.uint8)


class PackedClasses(Sequence):
    """A layout bank's class maps, kept compressed (:func:`pack_classes`) and unpacked when an entry is picked."""

    def __init__(self, packed: list[np.ndarray], shapes: np.ndarray, where: str):
        self.packed, self.shapes, self.where = packed, np.asarray(shapes, np.int64), where

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, i):
        from cmrstudio.errors import CmrError

        h, w = (int(v) for v in self.shapes[i])
        try:
            return np.frombuffer(zlib.decompress(self.packed[i].tobytes()), np.uint8).reshape(h, w)
        except (zlib.error, ValueError) as exc:
            raise CmrError(f"Entry {i} of the layout bank {self.where} cannot be unpacked ({exc}); rebuild the bank with "
                           "`cmrstudio train layout-bank`.") from None


class LayoutBank:
    """A prior by example (see the module notes): real scenes' fine tissue classes, one picked per seed among the ``k``
    whose heart is nearest the painted one, with a fine prior (``fallback``) beyond the picked scan."""

    def __init__(self, info, classes: list[np.ndarray], centres: np.ndarray, keys: np.ndarray, fallback, k: int, factor: int):
        self.info = info
        self.classes = classes  # per entry (S_i, S_i) uint8: LAYOUT_CLASSES indices, BEYOND_SCAN beyond its scan
        self.centres = np.asarray(centres, np.float64)
        self.keys = np.asarray(keys, np.float32)
        self.fallback = fallback
        self.k = max(1, min(int(k), len(classes)))
        self.factor = int(factor)
        from cmrstudio.case import patient_of

        self.patients = np.array([patient_of(e["case"]) for e in (info.card.get("training") or {}).get("entries", [])] or [""] * len(classes))
        self.leave_out: str | None = None  # evaluations: a patient whose own scans are not picked (see SceneMixin.leaving_out)

    def nearest(self, mask: np.ndarray) -> np.ndarray:
        """Indices of the ``k`` entries whose heart overlaps the painted one most (Dice of the key fractions), best first;
        none of the ``leave_out`` patient's."""
        q = heart_key(mask)
        dice = 2.0 * (self.keys @ q) / (self.keys.sum(1) + q.sum() + 1e-6)
        order = np.argsort(-dice, kind="stable")
        if self.leave_out is not None:
            order = order[self.patients[order] != self.leave_out]
        return order[:self.k]

    def pick(self, mask: np.ndarray, seed: int) -> int | None:
        """The entry a seed takes for this painted heart (None: every entry is the left-out patient's)."""
        near = self.nearest(mask)
        return int(near[np.random.default_rng(int(seed) + 7_000_027).integers(len(near))]) if len(near) else None

    def scene_sample(self, mask: np.ndarray, inside: np.ndarray, vendor_index: int, seed: int) -> np.ndarray:
        """A whole scene's class fractions (N_LAYOUT, S/f, S/f): the picked entry's classes, shifted heart onto heart;
        the fallback prior where that scan ends inside this one; 'outside' beyond this scan."""
        from cmrstudio.data.scene import class_fractions

        f, s = self.factor, mask.shape[-1]
        i = self.pick(mask, seed)
        if i is None:
            return self.fallback.scene_sample(mask, inside, vendor_index, seed)
        src = self.classes[i]
        dr, dc = (int(round(b - a)) for b, a in zip(self.centres[i], heart_centre(mask)))
        cls = np.full((s, s), BEYOND_SCAN, np.uint8)
        rs, re = max(0, -dr), min(s, src.shape[0] - dr)
        cs, ce = max(0, -dc), min(s, src.shape[1] - dc)
        if rs < re and cs < ce:
            cls[rs:re, cs:ce] = src[rs + dr:re + dr, cs + dc:ce + dc]
        unknown = cls == BEYOND_SCAN
        frac = class_fractions(np.where(unknown, 0, cls), f)  # unknown pixels counted as 'outside' for now
        share = unknown.reshape(s // f, f, s // f, f).mean(axis=(1, 3))
        inside_cells = np.asarray(inside, np.float32).reshape(s // f, f, s // f, f).mean(axis=(1, 3)) >= 0.5
        if (share[inside_cells] > 0).any():  # the picked scan ends inside this one: the fallback's classes there
            frac[0] -= share
            frac += share[None] * self.fallback.scene_sample(mask, inside, vendor_index, seed)
        frac[:, ~inside_cells] = 0.0  # beyond this scan: nothing but 'outside'
        frac[0, ~inside_cells] = 1.0
        return frac.astype(np.float32)


# -- files ------------------------------------------------------------------------------------------
def is_bank(info) -> bool:
    """Whether a layout model's card is a layout bank (:class:`LayoutBank`)."""
    return (info.card.get("conditioning") or {}).get("scheme") == "layout-bank-v1"


def own_classes(info) -> bool:
    """Whether scene models that render with this layout model are trained on each slice's own classes on its cells
    (a fine prior or a bank) rather than on layouts projected onto a PCA."""
    return is_fine(info) or is_bank(info)


def is_fine(info) -> bool:
    """Whether a layout model's card is a fine prior (:class:`FineLayout`) rather than the PCA."""
    return (info.card.get("conditioning") or {}).get("scheme") == "layout-fine-v1"


def fine_cell_px(info) -> int:
    """Frame pixels per cell of a fine prior, from its card."""
    return int(info.card["conditioning"].get("cell_px", FINE_FACTOR))


def load_layout(info, fine: bool = True) -> "LayoutPCA | FineLayout | LayoutBank":
    """A layout prior from its card (kind ``layout``): the PCA (architecture ``LayoutPCA``; no torch needed) or, when
    ``fine`` allows, a fine prior with its coarse PCA. Checksums checked."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from cmrstudio.errors import CmrError
    from cmrstudio.models.checkpoint import verify

    if own_classes(info):
        if not fine:
            raise CmrError(f"The layout model '{info.name}' is a {'layout bank' if is_bank(info) else 'fine tissue-class prior'}; "
                           "give the coarse prior (probabilistic PCA, like layout-cmr) here.")
        return _load_bank(info) if is_bank(info) else _load_fine(info)
    verify(info)
    arch = info.card.get("architecture", {})
    if arch.get("class", "LayoutPCA").split(".")[-1] != "LayoutPCA":
        raise CmrError(f"The layout model '{info.name}' is a {arch.get('class')}, which this cmrstudio cannot read.")
    try:
        state = load_file(str(info.weights_path))
        prior = LayoutPCA.from_state(LayoutConfig.from_dict(arch.get("options", {})), state)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CmrError(f"{info.weights_path} is not a readable layout prior ({exc}); re-copy it or refit it with `cmrstudio train layout`.") from None
    if prior.U.shape[1] != N_MAPS * prior.cfg.cells ** 2:
        raise CmrError(f"The layout prior {info.weights_path} does not fit the window in its card; refit it with `cmrstudio train layout`.")
    return prior


def installed_prior(name: str | None, sha256: str | None, trained: str):
    """The installed tissue-class prior ``name`` (default layout-cmr); refused in one sentence when ``sha256`` names
    another version than the one installed (``trained``: who was trained with it, for the sentence)."""
    from cmrstudio.errors import CmrError
    from cmrstudio.models.registry import get_model

    info = get_model(name or "layout-cmr", kind="layout")
    if sha256 and info.card.get("sha256") != sha256:
        raise CmrError(f"The tissue-class prior '{info.name}' installed ({info.card_path}) is not the one {trained} was trained with "
                       f"(sha256 {sha256[:12]}…); install that one, or retrain {trained} with this prior.")
    return info


def _load_fine(info) -> FineLayout:
    from cmrstudio.models.registry import build_model

    ref = info.card["conditioning"].get("coarse_prior") or {}
    coarse_info = installed_prior(ref.get("name"), ref.get("sha256"), f"the fine prior '{info.name}'")
    return FineLayout(info, build_model(info), load_layout(coarse_info, fine=False))


def _load_bank(info) -> LayoutBank:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from cmrstudio.errors import CmrError
    from cmrstudio.models.checkpoint import verify

    verify(info)
    cond = info.card["conditioning"]
    ref = cond.get("fallback_prior") or {}
    fb_info = installed_prior(ref.get("name"), ref.get("sha256"), f"the layout bank '{info.name}'")
    fallback = load_layout(fb_info)
    factor = int(cond.get("cell_px", FINE_FACTOR))
    if getattr(fallback, "factor", None) != factor:
        raise CmrError(f"The layout bank '{info.name}' has cells of {factor} px but its fallback prior '{fb_info.name}' makes cells of "
                       f"{fallback.factor} px; rebuild the bank with a fallback of its cell size.")
    try:
        state = load_file(str(info.weights_path))
        n = len(state["centres"])
        classes = [state[f"classes_{i:04d}"] for i in range(n)]
        if "shapes" in state:  # packed (banks built since 2026-12-06); raw 2-D maps before
            classes = PackedClasses(classes, state["shapes"].reshape(n, 2), str(info.weights_path))
        keys = state["keys"].astype(np.float32)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CmrError(f"{info.weights_path} is not a readable layout bank ({exc}); re-copy it or rebuild it with "
                       "`cmrstudio train layout-bank`.") from None
    if n == 0 or keys.shape != (n, N_HEART * (BANK_KEY_PX // BANK_KEY_POOL) ** 2):
        raise CmrError(f"The layout bank {info.weights_path} holds no usable entries; rebuild it with `cmrstudio train layout-bank`.")
    return LayoutBank(info, classes, state["centres"], keys, fallback, int((info.card.get("sampling") or {}).get("k", 20)), factor)
