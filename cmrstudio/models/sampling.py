"""Training objectives and samplers of the two on-demand models.

``diffusion``: variance-preserving, cosine schedule ``alpha = cos(pi t / 2)``,
``sigma = sin(pi t / 2)``, v-prediction (``v = alpha eps - sigma x0``; Salimans & Ho,
2022). Sampled with deterministic DDIM (eta 0) on any number of steps.

``flow``: rectified flow / flow matching (Liu et al., 2022; Lipman et al., 2022):
``x_t = (1 - t) x0 + t eps``, the network predicts the velocity ``eps - x0``; ``t`` is
drawn logit-normal in training (Esser et al., 2024), and sampling integrates the ODE
from noise (t = 1) to the image (t = 0) with Euler or Heun in 1–10 steps.

Both samplers are generators: they yield a :class:`Step` after every step with the
predicted clean image as a preview, so a caller can show progress and stop at any step
(stop iterating, or set ``cancel``). Given the same starting noise they are
deterministic. Classifier-free guidance: ``uncond + s (cond - uncond)``, the
unconditional branch seeing an all-zero mask; ``s = 1`` is plain conditional sampling.

The steps are spaced on a time grid warped by a shift ``s`` (Esser et al., 2024):
``t' = s t / (1 + (s - 1) t)``; ``s = 1`` is uniform, ``s > 1`` spends more of the steps
near the noise, where a few-step sampler loses most. A model's card may name its shift
(``sampling.time_shift``, measured for that model); without one the grid is uniform.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

OBJECTIVES = ("diffusion", "flow")
SOLVERS = {"diffusion": ("ddim",), "flow": ("euler", "heun")}
DEFAULT_STEPS = {"diffusion": 25, "flow": 4}
DEFAULT_GUIDANCE = 1.5
MAX_STEPS = 1000
MAX_GUIDANCE = 20.0


def check_steps(steps) -> int:
    """A step count from a person: a whole number 1..MAX_STEPS, or one sentence saying what to give."""
    from cmrstudio.errors import CmrError

    try:
        n = int(steps)
        if n != float(steps):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise CmrError(f"--steps {steps!r} must be a whole number of sampling steps (e.g. 25 for diffusion, 4 for flow).") from None
    if not 1 <= n <= MAX_STEPS:
        raise CmrError(f"--steps {n} must be between 1 and {MAX_STEPS}.")
    return n


def check_guidance(guidance) -> float:
    """A guidance scale from a person: 0..MAX_GUIDANCE (1 = plain conditional sampling)."""
    from cmrstudio.errors import CmrError

    try:
        g = float(guidance)
    except (TypeError, ValueError):
        raise CmrError(f"--guidance {guidance!r} must be a number (1 = no guidance, 1.5–3 typical).") from None
    if not math.isfinite(g) or g < 0 or g > MAX_GUIDANCE:
        raise CmrError(f"--guidance {guidance} must be between 0 and {MAX_GUIDANCE:g} (1 = no guidance, 1.5–3 typical).")
    return g


def valid_time_shift(shift) -> float | None:
    """A time-grid shift as a float when it is one a card may name (a finite number above 0, at most 100), else None."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float)):
        return None
    v = float(shift)
    return v if math.isfinite(v) and 0 < v <= 100 else None


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` times from 1 (noise) to 0 (image), uniform when ``shift`` is 1, denser near the noise above 1."""
    t = torch.linspace(1.0, 0.0, int(steps) + 1).tolist()
    if shift == 1.0:
        return t
    out = [shift * u / (1.0 + (shift - 1.0) * u) for u in t]
    out[0], out[-1] = 1.0, 0.0  # exact ends whatever the rounding
    return out


SHIFTS = (1, 4)  # renders made once (1), or averaged over the 4 offsets of a 2-px patch grid (see _Spin)


def valid_shifts(shifts) -> int | None:
    """A card's or a person's ``shifts``: 1 or 4, else None."""
    if isinstance(shifts, bool):
        return None
    try:
        n = int(shifts)
    except (TypeError, ValueError):
        return None
    return n if n == shifts and n in SHIFTS else None


class _Spin:
    """Cycle spinning (Coifman & Donoho, 1995) of the network: it is run on the input shifted by each of the 4 offsets of
    its 2-px patch grid at once (one batch; the edges padded by replication to keep the size a multiple of the network's
    unit), each output is shifted back, and the 4 are averaged. A grid locked to the patches (the period-2 stripes a
    patch-2 network can draw, which distillation strengthens) falls on a different phase in each copy and cancels;
    the image itself does not move. The conditioning's padded copies are made once per render.

    ``still``: conditioning channels drawn on a grid of the image's own (a scene's tissue classes, on cells of 2 px) stay
    where they are while the image and the other channels move, so a pattern the network draws along that grid's cell
    borders changes phase with the offset too and cancels (one pixel against cells of 2 px; on all 259 held-out slices of
    the HQ default, fully synthetic, the period-2 peak fell from 6.8 to 2.1, a real scan's 2.0, with KID the same). They
    are held midway between the offsets (the mean of their 4 shifted pads: half a pixel down and right), so against the
    image they sit ½ px either way in the copies and nothing drawn from them moves on average (held at the first offset,
    it landed ½ px up and left of the heart: 0.0008 from the teacher's renders against 0.00023 midway)."""

    OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))

    def __init__(self, net, onehot: torch.Tensor, vendor: torch.Tensor, still: slice | None = None):
        from cmrstudio.errors import CmrError

        unit = getattr(net, "size_unit", None)
        if not unit:
            raise CmrError(f"The network {type(net).__name__} does not say its size unit, so its renders cannot be averaged over "
                           "shifts; render it with shifts 1.")
        self.unit = int(unit)
        self.onehot, self.vendor = self.pad(onehot), vendor.repeat(len(self.OFFSETS))
        if still is not None and onehot[:, still].numel():
            held = self.pad(onehot[:, still]).unflatten(0, (len(self.OFFSETS), -1)).mean(0)
            self.onehot[:, still] = held.repeat(len(self.OFFSETS), 1, 1, 1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        u = self.unit
        return torch.cat([F.pad(x, (dx, u - dx, dy, u - dy), mode="replicate") for dy, dx in self.OFFSETS])

    def back(self, out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        parts = out.chunk(len(self.OFFSETS))
        return torch.stack([o[..., dy:dy + h, dx:dx + w] for o, (dy, dx) in zip(parts, self.OFFSETS)]).mean(0)


class Cancelled(Exception):
    """Raised by a sampler when its cancel event is set between steps."""


@dataclass
class Step:
    step: int  # 1..total
    total: int
    t: float  # the time reached after this step (0 = clean)
    preview: np.ndarray  # predicted clean image, (B, N, N) float32 in [0, 1]
    done: bool = False

    @property
    def image(self) -> np.ndarray | None:
        return self.preview if self.done else None


# -- schedules and training losses -------------------------------------------------------------

def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = t * (math.pi / 2)
    return torch.cos(a), torch.sin(a)


def sample_t(objective: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if objective == "flow":  # logit-normal: more weight on the middle of the path
        return torch.sigmoid(torch.randn(n, generator=generator))
    return torch.rand(n, generator=generator)


def training_loss(net, objective: str, x0: torch.Tensor, onehot: torch.Tensor, vendor: torch.Tensor, t: torch.Tensor,
                  noise: torch.Tensor, per_sample: bool = False, with_x0: bool = False):
    """MSE between the network output and the objective's target (v for diffusion, velocity for flow; a categorical
    flow model: cross-entropy of its class logits);
    the batch mean, or one value per sample with ``per_sample``. With ``with_x0``: (loss, the clean image the
    prediction points to), for losses on the image itself."""
    tt = t[:, None, None, None]
    if objective == "diffusion":
        alpha, sigma = alpha_sigma(tt)
        xt = alpha * x0 + sigma * noise
        target = alpha * noise - sigma * x0
    elif objective == "flow":
        xt = (1 - tt) * x0 + tt * noise
        target = noise - x0
    else:
        raise ValueError(f"unknown objective {objective!r}")
    if getattr(net, "categorical", False):  # class logits against the true classes (soft at cells on a boundary)
        if with_x0:
            raise ValueError("a categorical flow model has no image-space losses")
        ce = -((x0 + 1) / 2 * F.log_softmax(net.logits(xt, t, onehot, vendor).float(), dim=1)).sum(1).flatten(1).mean(1)
        return ce if per_sample else ce.mean()
    pred = net(xt, t, onehot, vendor).float()
    loss = ((pred - target) ** 2).flatten(1).mean(1) if per_sample else F.mse_loss(pred, target)
    if not with_x0:
        return loss
    return loss, (alpha * xt - sigma * pred if objective == "diffusion" else xt - tt * pred)


# -- sampling ----------------------------------------------------------------------------------

def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type in ("cpu", "cuda"))


def _predict(net, x: torch.Tensor, t: float, onehot: torch.Tensor, vendor: torch.Tensor, guidance: float, bf16: bool,
             maps: dict | None = None) -> torch.Tensor:
    """The network's output at ``t``; with guidance, ``onehot`` and ``vendor`` already hold both branches (see
    :func:`_branches`). ``maps``: the sampler's store of conditioning-only maps, for networks that keep them."""
    b = x.shape[0]
    tt = torch.full((b,), float(t), device=x.device)
    extra = {"maps": maps} if maps is not None else {}
    with _autocast(x.device, bf16):
        if guidance == 1.0:
            return net(x, tt, onehot, vendor, **extra).float()
        both = net(torch.cat([x, x]), torch.cat([tt, tt]), onehot, vendor, **extra).float()
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def _branches(onehot: torch.Tensor, vendor: torch.Tensor, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """With guidance: the conditional and the unconditional (all-zero mask) branch in one batch, made once per sampling."""
    if guidance == 1.0:
        return onehot, vendor
    return torch.cat([onehot, torch.zeros_like(onehot)]), torch.cat([vendor, vendor])


def _keeps_maps(net) -> bool:
    import inspect

    return "maps" in inspect.signature(net.forward).parameters


def _to01(x: torch.Tensor) -> np.ndarray:
    """(B, 1, N, N) -> (B, N, N) in [0, 1]; several channels stay (B, C, N, N)."""
    x = x[:, 0] if x.shape[1] == 1 else x
    return ((x.float().clamp(-1, 1).cpu().numpy() + 1.0) / 2.0).astype(np.float32)


def _check(objective: str, steps: int, solver: str | None) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}")
    solver = solver or SOLVERS[objective][0]
    if solver not in SOLVERS[objective]:
        raise ValueError(f"solver {solver!r} does not fit a {objective} model; use {', '.join(SOLVERS[objective])}")
    check_steps(steps)
    return solver


def _solve(net, objective: str, onehot: torch.Tensor, vendor: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float,
           solver: str, bf16: bool, cancel: threading.Event | None, time_shift: float,
           shifts: int = 1, still: slice | None = None) -> Iterator[tuple[int, float, torch.Tensor, torch.Tensor]]:
    """The samplers' loop over :func:`time_grid`: yields (step index, time reached, x, the clean image x points to).
    ``shifts`` 4: every network output is averaged over the patch grid's offsets, the ``still`` channels held (:class:`_Spin`)."""
    ts = time_grid(steps, time_shift)
    x = noise.to(onehot.device, torch.float32)
    spin = _Spin(net, onehot, vendor, still) if shifts > 1 else None
    if spin is not None:
        onehot, vendor = spin.onehot, spin.vendor
    onehot, vendor = _branches(onehot, vendor, guidance)
    maps = {} if _keeps_maps(net) else None  # conditioning-only maps, made at the first step and reused

    def predict(x, t):
        if spin is None:
            return _predict(net, x, t, onehot, vendor, guidance, bf16, maps)
        return spin.back(_predict(net, spin.pad(x), t, onehot, vendor, guidance, bf16, maps), x.shape[-2:])

    for i in range(steps):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        t, s = ts[i], ts[i + 1]
        out = predict(x, t)
        if objective == "diffusion":
            a_t, s_t = math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)
            a_s, s_s = math.cos(s * math.pi / 2), math.sin(s * math.pi / 2)
            x0 = (a_t * x - s_t * out).clamp(-1, 1)
            eps = (x - a_t * x0) / s_t  # s_t > 0 for every t > 0 on this grid
            x = a_s * x0 + s_s * eps
            preview = x0
        else:
            if solver == "heun" and s > 0:
                x_e = x - (t - s) * out
                out2 = predict(x_e, s)
                out = 0.5 * (out + out2)
                x = x - (t - s) * out
            else:
                x = x - (t - s) * out
            preview = x - s * out  # the clean image the current velocity points to
        yield i, s, x, preview


@torch.inference_mode()
def sample(net, objective: str, onehot: torch.Tensor, vendor: torch.Tensor, noise: torch.Tensor, steps: int,
           guidance: float = DEFAULT_GUIDANCE, solver: str | None = None, bf16: bool = False,
           cancel: threading.Event | None = None, time_shift: float = 1.0, shifts: int = 1, still: slice | None = None) -> Iterator[Step]:
    """Integrate from ``noise`` (B, 1, N, N) at t = 1 to an image at t = 0 over :func:`time_grid`, yielding every step
    (``shifts`` 4: each step's network output averaged over the patch grid's offsets, the ``still`` channels held)."""
    solver = _check(objective, steps, solver)
    steps = int(steps)
    for i, s, x, preview in _solve(net, objective, onehot, vendor, noise, steps, guidance, solver, bf16, cancel, time_shift, shifts, still):
        done = i == steps - 1
        yield Step(i + 1, steps, s, _to01(x if done else preview), done)


@torch.no_grad()
def integrate(net, objective: str, onehot: torch.Tensor, vendor: torch.Tensor, noise: torch.Tensor, steps: int,
              guidance: float = DEFAULT_GUIDANCE, solver: str | None = None, bf16: bool = False, time_shift: float = 1.0,
              shifts: int = 1, still: slice | None = None) -> torch.Tensor:
    """What :func:`sample` ends at, as a tensor on the network's device in its [-1, 1] range, without the previews' copies
    to the host at every step (a training target: no gradient, and not an inference-mode tensor)."""
    solver = _check(objective, steps, solver)
    x = None
    for _, _, x, _ in _solve(net, objective, onehot, vendor, noise, int(steps), guidance, solver, bf16, None, time_shift, shifts, still):
        pass
    return x.float().clamp(-1, 1)


def run_to_end(it: Iterator[Step]) -> np.ndarray:
    last = None
    for last in it:
        pass
    assert last is not None and last.done
    return last.preview


def noise_for(seed: int, size: int, batch: int = 1, channels: int = 1) -> torch.Tensor:
    """The starting noise of a seed: one (1, C, N, N) field, shared by every slice of a batch."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(1, channels, size, size, generator=g).expand(batch, -1, -1, -1).contiguous()
