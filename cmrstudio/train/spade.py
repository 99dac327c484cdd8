"""Training a SPADE generator on any folder the readers understand (and/or the phantom).

The run folder ``OUT`` holds:

* ``NAME.safetensors`` + ``NAME.json`` — the model (EMA generator weights) and its card,
  rewritten at every save, so a run can be used while it trains;
* ``train_state/`` — raw generator, discriminator, optimiser states and the step,
  for ``--resume``;
* ``samples/step_NNNNNN.png`` (and ``latest.png``) — a fixed grid of held masks, their
  real images and renders with two seeds, so a person can watch it learn;
* ``log.jsonl`` — one line of losses per logging interval.

Losses: hinge GAN, discriminator feature matching, and an L1 on 4×-downsampled images
(instead of the VGG perceptual loss of the SPADE paper: no ImageNet weights offline).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from cmrstudio.anatomy import COLOURS, LABELS, VENDORS
from cmrstudio.data.dataset import Augment, SliceDataset
from cmrstudio.data.frame import LIVE_SPACING_MM
from cmrstudio.errors import CmrError
from cmrstudio.io.common import atomic_path, write_text_atomic
from cmrstudio.models.checkpoint import load_state, save_model, save_state
from cmrstudio.engine.device import hardware, pick_device
from cmrstudio.train.common import append_log, check_counts, data_summary, endless, load_cases, terms_for
from cmrstudio.models.spade import (
    PRESETS,
    LossWeights,
    MultiScaleDiscriminator,
    SpadeConfig,
    SpadeGenerator,
    count_parameters,
    d_hinge,
    feature_matching,
    g_hinge,
    lowpass_l1,
    onehot,
)

@dataclass
class TrainOptions:
    data: list[str] = field(default_factory=list)
    out: str = "runs/spade"
    name: str = "spade"
    phantom: int = 0  # phantom cases added to the data
    exclude: list[str] = field(default_factory=list)  # case-id prefixes held out
    preset: str = "lite"
    size: int = 128
    steps: int = 2000
    batch: int = 8
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    seed: int = 0
    sample_every: int = 250
    save_every: int = 500
    log_every: int = 25
    device: str | None = None
    threads: int | None = None
    vendor_dropout: float = 0.15  # fraction of samples trained as vendor 'unknown'
    ema: float = 0.999
    require_labels: tuple[int, ...] = (1, 2)  # LV and MYO in every training slice
    augment: bool = True
    resume: bool = False
    max_minutes: float | None = None
    fm: float = 10.0
    lowpass: float = 10.0


def _colour_mask(mask: np.ndarray) -> np.ndarray:
    rgb = np.zeros(mask.shape + (3,), np.uint8)
    for lab in range(1, len(LABELS)):
        rgb[mask == lab] = (np.array(COLOURS[lab][:3]) * 255).astype(np.uint8)
    return rgb


def write_grid(path: Path, masks: np.ndarray, rows: list[np.ndarray]) -> Path:
    """PNG: one column per sample; first row the coloured mask, then each image row in [-1, 1]."""
    from PIL import Image

    tiles = [np.concatenate([_colour_mask(m) for m in masks], axis=1)]
    for r in rows:
        g = ((np.clip(r, -1, 1) + 1) * 127.5).astype(np.uint8)
        tiles.append(np.repeat(np.concatenate(list(g), axis=1)[..., None], 3, axis=2))
    grid = np.concatenate(tiles, axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


class SpadeTrainer:
    def __init__(self, opts: TrainOptions, log: Callable[[str], None] | None = None):
        self.opts = opts
        self.log = log or (lambda s: print(s, file=sys.stderr))
        if opts.preset not in PRESETS:
            raise CmrError(f"--preset {opts.preset!r} is not known; use one of {', '.join(PRESETS)}.")
        check_counts(steps=opts.steps, batch=opts.batch, sample_every=opts.sample_every, save_every=opts.save_every, log_every=opts.log_every)
        try:
            SpadeConfig(size=opts.size).n_up
        except ValueError:
            raise CmrError(f"--size {opts.size} must be 8 times a power of two, like 64, 128 or 256.") from None
        if opts.threads:
            torch.set_num_threads(opts.threads)
        torch.manual_seed(opts.seed)
        self.device = pick_device(opts.device)
        self.out = Path(opts.out)
        self.state_dir = self.out / "train_state"
        old_state = self.out / "train_state.old"
        if not self.state_dir.exists() and old_state.exists():  # interrupted between the two renames of a save
            os.replace(old_state, self.state_dir)
        if self.state_dir.exists() and not opts.resume:
            raise CmrError(f"{self.out} already holds a training run; pass --resume to continue it, or choose another --out.")
        if opts.resume and not (self.state_dir / "state.json").exists():
            raise CmrError(f"--resume was given, but {self.out} holds no training state (train_state/state.json) to continue from.")

        self.cases = load_cases(opts.data, opts.phantom, opts.exclude, opts.seed)
        spacing = LIVE_SPACING_MM * 128 / opts.size
        self.ds = SliceDataset(
            self.cases, size=opts.size, spacing_mm=spacing, augment=Augment() if opts.augment else None,
            seed=opts.seed, require_labels=opts.require_labels,
        )
        counts = Counter(self.ds.vendors.tolist())
        w = np.array([1.0 / np.sqrt(counts[v]) for v in self.ds.vendors])  # soften vendor imbalance
        self.sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(self.ds), replacement=True,
                                             generator=torch.Generator().manual_seed(opts.seed))
        if len(self.ds) < opts.batch:
            raise CmrError(f"The data gives {len(self.ds)} training slices, fewer than --batch {opts.batch}; lower --batch or add data.")
        self.loader = DataLoader(self.ds, batch_size=opts.batch, sampler=self.sampler, num_workers=0, drop_last=True)

        base = PRESETS[opts.preset]
        self.cfg = SpadeConfig.from_dict({**base.to_dict(), "size": opts.size})
        self.G = SpadeGenerator(self.cfg).to(self.device)
        self.D = MultiScaleDiscriminator(self.cfg).to(self.device)
        self.G_ema = SpadeGenerator(self.cfg).to(self.device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        for p in self.G_ema.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=opts.lr_g, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=opts.lr_d, betas=(0.0, 0.999))
        self.weights = LossWeights(fm=opts.fm, lowpass=opts.lowpass)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.rng = torch.Generator().manual_seed(opts.seed + 1)
        self._fixed = self._fixed_batch()
        if opts.resume:
            self._load_state()

    # -- state ---------------------------------------------------------------------------------
    def _fixed_batch(self, n: int = 6) -> dict:
        picks, seen = [], set()
        for i, (cid, z) in enumerate(self.ds.index):
            if cid not in seen and z >= 1:
                picks.append(i)
                seen.add(cid)
        step = max(1, len(picks) // n)
        picks = picks[::step][:n] or [0]
        masks = torch.from_numpy(self.ds.masks[picks].astype(np.int64))
        images = torch.from_numpy(self.ds.images[picks] * 2 - 1)[:, None]
        vendors = torch.from_numpy(self.ds.vendors[picks])
        z = torch.randn(2, 1, self.cfg.z_dim, generator=torch.Generator().manual_seed(1234)).expand(-1, len(picks), -1)
        return {"mask": masks, "image": images, "vendor": vendors, "z": z}

    def _save_state(self) -> None:
        """Write the whole training state into a fresh folder, then swap it in (never half old, half new)."""
        import shutil

        tmp, old = self.out / "train_state.tmp", self.out / "train_state.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_state(tmp / "generator.safetensors", self.G.state_dict())
        save_state(tmp / "generator_ema.safetensors", self.G_ema.state_dict())
        save_state(tmp / "discriminator.safetensors", self.D.state_dict())
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.generator.get_state(), "noise": self.rng.get_state()}
        torch.save({"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict(), "rng": rng}, tmp / "optim.pt")
        st = {"step": self.step, "elapsed_s": self.elapsed, "config": self.cfg.to_dict(), "options": _opts_dict(self.opts),
              "numpy_rng": self.ds.rng.bit_generator.state, "history_tail": self.history[-1:]}
        (tmp / "state.json").write_text(json.dumps(st, indent=2), encoding="utf-8")
        if self.state_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.state_dir, old)
        os.replace(tmp, self.state_dir)
        shutil.rmtree(old, ignore_errors=True)

    def _load_state(self) -> None:
        try:
            st = json.loads((self.state_dir / "state.json").read_text(encoding="utf-8"))
            step = int(st["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CmrError(f"The training state {self.state_dir / 'state.json'} is damaged ({exc}); start a new run with another --out.") from None
        if st.get("config") != self.cfg.to_dict():
            raise CmrError(f"The run in {self.out} was trained with another architecture ({st.get('config')}); resume it with the same --preset and --size.")
        saved = st.get("options", {})
        mine = _opts_dict(self.opts)
        for key in RESUME_MUST_MATCH:
            if key in saved and saved[key] != mine[key]:
                raise CmrError(f"The run in {self.out} was trained with --{key.replace('_', '-')} {saved[key]!r}, not {mine[key]!r}; "
                               "resume it with the same data options, or start a new run with another --out.")
        self.G.load_state_dict(load_state(self.state_dir / "generator.safetensors"))
        self.G_ema.load_state_dict(load_state(self.state_dir / "generator_ema.safetensors"))
        self.D.load_state_dict(load_state(self.state_dir / "discriminator.safetensors"))
        try:
            opt = torch.load(self.state_dir / "optim.pt", map_location=self.device, weights_only=True)
            self.opt_g.load_state_dict(opt["g"])
            self.opt_d.load_state_dict(opt["d"])
        except (RuntimeError, KeyError, OSError, ValueError, EOFError) as exc:
            raise CmrError(f"The optimiser state in {self.state_dir} cannot be read ({exc}); start a new run with another --out.") from None
        self.step = step
        self.elapsed = float(st.get("elapsed_s", 0.0))
        self.history = list(st.get("history_tail", []))
        rng = opt.get("rng")
        if rng:  # continue the random streams exactly where the run stopped
            torch.set_rng_state(rng["torch"])
            self.sampler.generator.set_state(rng["sampler"])
            self.rng.set_state(rng["noise"])
            if st.get("numpy_rng"):
                self.ds.rng.bit_generator.state = st["numpy_rng"]
        else:  # state written before random streams were saved
            self.rng.manual_seed(self.opts.seed + 1 + self.step)
        log = self.out / "log.jsonl"
        if log.exists():  # drop lines written after the saved step (a crash between saves)
            keep = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            write_text_atomic(log, "".join(k + "\n" for k in keep))
        self.log(f"Resuming {self.out} at step {self.step}.")

    def card(self) -> dict:
        summary = data_summary(self.ds, self.cases)
        trained_vendors = sorted({VENDORS[int(v)] for v in self.ds.vendors} | ({"unknown"} if self.opts.vendor_dropout > 0 else set()), key=VENDORS.index)
        return {
            "kind": "spade",
            "architecture": {
                "class": "cmrstudio.models.spade.SpadeGenerator",
                "preset": self.opts.preset,
                "options": self.cfg.to_dict(),
                "parameters": count_parameters(self.G),
                "discriminator_parameters": count_parameters(self.D),
                "normalisation": "instance norm + SPADE (mask one-hot, vendor bias)",
                "losses": {"hinge_gan": 1.0, "feature_matching": self.weights.fm, "lowpass_l1_4x": self.weights.lowpass,
                           "note": "no VGG perceptual loss (no ImageNet weights offline); low-pass L1 instead"},
                "ema": self.opts.ema,
            },
            "frame": {"size": self.opts.size, "spacing_mm": LIVE_SPACING_MM * 128 / self.opts.size,
                      "intensity": "0.5-99.5 percentile of the volume to [0,1]; net output [-1,1]"},
            "label_scheme": "canonical",
            "vendors": list(VENDORS),
            "vendors_trained": trained_vendors,
            "training": {
                "data": summary,
                "held_out_case_prefixes": self.opts.exclude,
                "slices": len(self.ds),
                "iterations": self.step,
                "batch": self.opts.batch,
                "images_seen": self.step * self.opts.batch,
                "lr": {"g": self.opts.lr_g, "d": self.opts.lr_d},
                "augment": "rotation ±15°, scale 0.9–1.1, shift ±6%" if self.opts.augment else "none",
                "vendor_dropout": self.opts.vendor_dropout,
                "hardware": hardware(self.device),
                "seconds": round(self.elapsed, 1),
                "torch": torch.__version__,
                "seed": self.opts.seed,
                "last_losses": self.history[-1] if self.history else None,
            },
            "terms": terms_for(summary),
            "metrics": self._existing_metrics(),
        }

    def _existing_metrics(self) -> dict:
        """Metrics measured on an earlier save (e.g. by `evaluate --write-card`) are kept."""
        cp = self.out / f"{self.opts.name}.json"
        try:
            return dict(json.loads(cp.read_text(encoding="utf-8")).get("metrics", {}))
        except (OSError, ValueError, AttributeError):
            return {}

    def save_model(self):
        return save_model(self.out, self.opts.name, self.G_ema.state_dict(), self.card())

    @torch.no_grad()
    def write_samples(self) -> Path:
        f = self._fixed
        oh = onehot(f["mask"]).to(self.device)
        v = f["vendor"].to(self.device)
        rows = [f["image"][:, 0].numpy()]
        for z in f["z"]:
            rows.append(self.G_ema(oh, v, z.to(self.device)).cpu()[:, 0].numpy())
        d = self.out / "samples"
        d.mkdir(parents=True, exist_ok=True)
        p = write_grid(d / f"step_{self.step:06d}.png", f["mask"].numpy(), rows)
        write_grid(d / "latest.png", f["mask"].numpy(), rows)
        return p

    # -- training ------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        real = batch["image"].to(self.device)
        oh = onehot(batch["mask"]).to(self.device)
        vendor = batch["vendor"].clone()
        drop = torch.rand(vendor.shape, generator=self.rng) < self.opts.vendor_dropout
        vendor[drop] = VENDORS.index("unknown")
        vendor = vendor.to(self.device)

        fake = self.G(oh, vendor)
        d_real = self.D(real, oh, vendor)
        d_fake = self.D(fake.detach(), oh, vendor)
        loss_d = d_hinge(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        d_fake = self.D(fake, oh, vendor)
        with torch.no_grad():
            d_real = self.D(real, oh, vendor)
        adv = g_hinge(d_fake)
        fm = feature_matching(d_real, d_fake)
        lp = lowpass_l1(fake, real)
        loss_g = adv + self.weights.fm * fm + self.weights.lowpass * lp
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        decay = min(self.opts.ema, (1 + self.step) / (10 + self.step))  # warm-up: short runs still average
        with torch.no_grad():
            for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                pe.lerp_(p, 1 - decay)
        return {k: float(v.detach()) for k, v in (("d", loss_d), ("g_adv", adv), ("fm", fm), ("lowpass", lp), ("g", loss_g))}

    def run(self, progress: bool = True) -> "SpadeTrainer":
        from tqdm import tqdm

        opts = self.opts
        self.out.mkdir(parents=True, exist_ok=True)
        if self.step == 0:
            self.log(
                f"Training SPADE ({opts.preset}, {count_parameters(self.G) / 1e6:.2f} M parameters) on {len(self.ds)} slices "
                f"from {len(self.cases)} cases, {self.device}, {opts.steps} steps of {opts.batch}."
            )
            self.write_samples()
        it = endless(self.loader)
        bar = tqdm(total=opts.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        acc: dict[str, list[float]] = {}
        t_last = time.perf_counter()
        deadline = None if opts.max_minutes is None else time.perf_counter() + 60 * opts.max_minutes
        try:
            while self.step < opts.steps:
                losses = self.train_step(next(it))
                self.step += 1
                now = time.perf_counter()
                self.elapsed += now - t_last
                t_last = now
                for k, v in losses.items():
                    acc.setdefault(k, []).append(v)
                bar.update(1)
                if self.step % opts.log_every == 0 or self.step == opts.steps:
                    rec = {"step": self.step, "elapsed_s": round(self.elapsed, 1), **{k: round(float(np.mean(v)), 4) for k, v in acc.items()}}
                    self.history.append(rec)
                    acc = {}
                    bar.set_postfix(d=rec["d"], g=rec["g_adv"], lp=rec["lowpass"])
                    append_log(self.out / "log.jsonl", rec)
                if self.step % opts.sample_every == 0:
                    self.write_samples()
                if self.step % opts.save_every == 0:
                    self._save_state()
                    self.save_model()
                if deadline is not None and now > deadline:
                    self.log(f"Stopping at step {self.step}: --max-minutes {opts.max_minutes} reached.")
                    break
        except KeyboardInterrupt:
            self.log(f"Interrupted at step {self.step}; saving so that --resume continues from here.")
            self._save_state()
            self.save_model()
            raise
        finally:
            bar.close()
        self._save_state()
        self.write_samples()
        self.save_model()
        return self


RESUME_MUST_MATCH = ("data", "phantom", "exclude", "seed", "batch", "size", "preset", "require_labels", "augment")


def _opts_dict(opts: TrainOptions) -> dict:
    d = asdict(opts)
    d["require_labels"] = list(d["require_labels"])
    return d
