"""What every generator trainer shares: data, run folder, resumable state, sample grids, the loop.

The run folder ``OUT`` holds:

* ``NAME.safetensors`` + ``NAME.json`` — the model (EMA weights) and its card, rewritten at
  every save, so a run can be used while it trains;
* ``train_state/`` — raw and EMA network weights, optimiser states, random streams and the
  step, for ``--resume`` (written to a fresh folder and swapped in whole);
* ``checkpoints/NAME-stepNNNNNN.{safetensors,json}`` — with ``--keep-checkpoints``, the model as it was at every
  save, for ``cmrstudio evaluate checkpoints`` to measure and a person to pick from;
* ``samples/step_NNNNNN.png`` (and ``latest.png``) — a fixed grid of held masks, their real
  images and renders with two seeds, so a person can watch it learn;
* ``log.jsonl`` — one line of losses per logging interval.

A subclass builds its networks (``build``), says which to save (``networks``,
``optimisers``), does one step (``train_step``), renders the fixed grid (``render_fixed``)
and describes its architecture for the card (``architecture``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from cmrstudio.anatomy import COLOURS, LABELS, VENDORS
from cmrstudio.data.dataset import Augment, SceneAugment, SceneDataset, SliceDataset, spread_picks
from cmrstudio.data.frame import LIVE_SPACING_MM
from cmrstudio.data.scene import check_class_thresholds
from cmrstudio.engine.device import hardware, pick_device
from cmrstudio.errors import CmrError
from cmrstudio.io.common import atomic_path, write_text_atomic
from cmrstudio.models.checkpoint import load_state, save_model, save_state
from cmrstudio.train.common import append_log, check_counts, data_summary, endless, load_cases, loader_workers, terms_for


@dataclass
class BaseOptions:
    data: list[str] = field(default_factory=list)
    out: str = "runs/model"
    name: str = "model"
    phantom: int = 0  # phantom cases added to the data
    exclude: list[str] = field(default_factory=list)  # case-id prefixes held out
    preset: str = "lite"
    size: int = 128
    steps: int = 2000
    batch: int = 8
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
    layout_prior: str | None = None  # scene presets: the tissue-class prior (name or card; default: the installed layout-cmr)
    keep_checkpoints: bool = False  # also keep a copy of the model at every save (checkpoints/NAME-stepNNNNNN), to pick one by measurement
    workers: int = 0  # data-loading processes (0: in the training process); a GPU run needs several to keep the GPU fed
    in_patient: float | None = None  # scene presets: fraction of training windows in this patient (None: half)
    hide_heart_classes: float = 0.0  # scene presets: mm around the heart (and on it) where fully synthetic windows get no tissue classes
    class_thresholds: str = "scan"  # scene and fine-layout presets: the tissue bands' thresholds from the whole scan or the heart frame


LEGACY_STATE_NAMES = {"ema": "generator_ema"}  # SPADE runs saved before the shared trainer
RESUME_MUST_MATCH = ("data", "phantom", "exclude", "seed", "batch", "size", "preset", "require_labels", "augment", "layout_prior",
                     "in_patient", "hide_heart_classes", "class_thresholds")


def opts_dict(opts) -> dict:
    d = asdict(opts)
    d["require_labels"] = list(d["require_labels"])
    return d


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


class BaseTrainer:
    kind = "model"
    presets: dict = {}
    postfix: tuple[str, ...] = ()
    grid_penalty = None  # a GridPenalty when the run trains against the period-2 grid (its running mean is saved with the state)
    pretraining: dict | None = None  # the card's training.pretraining record of the model a run starts from (--init)

    def __init__(self, opts, log: Callable[[str], None] | None = None):
        self.opts = opts
        self.log = log or (lambda s: print(s, file=sys.stderr))
        if opts.preset not in self.presets:
            raise CmrError(f"--preset {opts.preset!r} is not known; use one of {', '.join(self.presets)}.")
        check_counts(steps=opts.steps, batch=opts.batch, sample_every=opts.sample_every, save_every=opts.save_every, log_every=opts.log_every)
        loader_workers(opts.workers, "cpu")  # --workers checked before the data is loaded
        if opts.in_patient is not None:
            if not self.scene_model():
                raise CmrError(f"--in-patient applies to scene presets only (in-patient windows need the scene's context); "
                               f"use --preset scene, or leave --in-patient out for --preset {opts.preset}.")
            if not (math.isfinite(opts.in_patient) and 0.0 <= opts.in_patient <= 1.0):
                raise CmrError(f"--in-patient {opts.in_patient} must be a fraction from 0 (all fully synthetic) to 1 (all in this patient).")
        if opts.hide_heart_classes:
            if not (math.isfinite(opts.hide_heart_classes) and opts.hide_heart_classes > 0):
                raise CmrError(f"--hide-heart-classes {opts.hide_heart_classes} must be a distance in mm above 0 (2 to 5 usual), or left out.")
            if not self.scene_model():
                raise CmrError(f"--hide-heart-classes hides tissue classes, which only scene presets are conditioned on; use --preset scene, "
                               f"or leave it out for --preset {opts.preset}.")
        if check_class_thresholds(opts.class_thresholds) != "scan":
            if not self.tissue_class_model():
                raise CmrError(f"--class-thresholds sets how tissue classes are drawn from the scans, which only scene and layout-fine "
                               f"presets learn; leave it out for --preset {opts.preset}.")
        self.check_options()
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
        self.spacing_mm = LIVE_SPACING_MM * 128 / opts.size
        self.ds = self.make_dataset()
        counts = Counter(self.ds.vendors.tolist())
        w = np.array([1.0 / np.sqrt(counts[v]) for v in self.ds.vendors])  # soften vendor imbalance
        self.sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(self.ds), replacement=True,
                                             generator=torch.Generator().manual_seed(opts.seed))
        if len(self.ds) < opts.batch:
            raise CmrError(f"The data gives {len(self.ds)} training slices, fewer than --batch {opts.batch}; lower --batch or add data.")
        self.loader = DataLoader(self.ds, batch_size=opts.batch, sampler=self.sampler, drop_last=True, **loader_workers(opts.workers, self.device))

        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.rng = torch.Generator().manual_seed(opts.seed + 1)
        self.build()
        self._fixed = self._fixed_batch()
        if opts.resume:
            self._load_state()

    # -- what a subclass provides ----------------------------------------------------------------
    def scene_model(self) -> bool:
        """True for the fully convolutional scene presets (heart, tissue classes and context as conditioning)."""
        from cmrstudio.data.scene import CONDITION_CHANNELS

        return getattr(self.presets[self.opts.preset], "cond_channels", None) == CONDITION_CHANNELS

    def tissue_class_model(self) -> bool:
        """True when the model learns from the slices' tissue classes (scene presets; the fine prior's too)."""
        return self.scene_model()

    def layout_prior(self, coarse: bool = False):
        """The tissue-class prior a scene model renders with. The PCA (layout-cmr): training conditions are projected onto it
        (returned). A fine prior or a layout bank: training conditions are the slices' own classes on its cells (None returned).
        ``coarse``: only a PCA will do (the fine prior's own training)."""
        from cmrstudio.models.layout import fine_cell_px, load_layout, own_classes
        from cmrstudio.models.registry import get_model

        try:
            self.layout_info = get_model(self.opts.layout_prior or "layout-cmr", kind="layout")
        except CmrError as exc:
            raise CmrError(f"{exc.message} Scene presets are trained with a tissue-class prior: fit one first with "
                           "`cmrstudio train layout --data ... --out RUN` and give --layout-prior RUN/NAME.json.") from None
        if own_classes(self.layout_info) and not coarse:
            self.layout_factor = fine_cell_px(self.layout_info)
            return None
        prior = load_layout(self.layout_info, fine=False)
        self.layout_factor = prior.factor
        return prior

    def make_dataset(self):
        """The training samples: framed heart slices, or windows of whole scenes for scene presets."""
        o = self.opts
        if self.scene_model():
            prior = self.layout_prior()
            return SceneDataset(self.cases, window=o.size, spacing_mm=self.spacing_mm, augment=self.scene_augment() if o.augment else None,
                                seed=o.seed, require_labels=o.require_labels, layout_prior=prior, layout_factor=self.layout_factor,
                                hide_layout_mm=o.hide_heart_classes, class_thresholds=o.class_thresholds)
        return SliceDataset(self.cases, size=o.size, spacing_mm=self.spacing_mm, augment=Augment() if o.augment else None,
                            seed=o.seed, require_labels=o.require_labels)

    def check_options(self) -> None:
        """Validate subclass options (raise CmrError)."""

    def build(self) -> None:
        """Create ``self.cfg``, the networks and the optimisers."""
        raise NotImplementedError

    def networks(self) -> dict[str, torch.nn.Module]:
        """Networks saved in the training state; the key 'ema' is the model that is shipped."""
        raise NotImplementedError

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict[str, float]:
        raise NotImplementedError

    def render_fixed(self, fixed: dict) -> list[np.ndarray]:
        """Rows of the sample grid (each (n, N, N) in [-1, 1]) for the fixed masks."""
        raise NotImplementedError

    def architecture(self) -> dict:
        raise NotImplementedError

    def card_extra(self) -> dict:
        return {}

    def conditioning_card(self) -> dict:
        """What a scene model is conditioned on (the engine builds the same maps at render time)."""
        from cmrstudio.data.scene import LAYOUT_CLASSES

        if not self.scene_model():
            return {}
        projected = bool(getattr(self.ds, "projected", None))
        return {"conditioning": {
            "scheme": "scene-v1",
            "channels": ["LV", "MYO", "RV", *(f"tissue:{c}" for c in LAYOUT_CLASSES), "context", "context-valid"],
            "layout_classes": list(LAYOUT_CLASSES), "layout_factor": self.layout_factor,
            "modes": {"in-patient": "the real scan outside a margin around the old and new heart is the context",
                      "fully-synthetic": "tissue-class fractions from the learned prior; no real pixel"},
            "fully_convolutional": True,
            "layout_training": ("each slice's own tissue classes projected onto the prior" if projected
                                else f"each slice's own tissue classes on cells of {self.layout_factor} px"),
            # projected: bound to that very prior; own classes: any fine prior of the same cells fits (this one is the default)
            "layout_prior": ({"name": self.layout_info.name, "sha256": self.layout_info.card["sha256"]} if projected
                             else {"name": self.layout_info.name, "cell_px": self.layout_factor}),
            # the renderer hides the classes there too: the model draws the heart's inside and rim from the labels alone
            **({"layout_hidden_near_heart_mm": self.opts.hide_heart_classes} if self.opts.hide_heart_classes else {}),
            **self.class_thresholds_card(),
        }}

    def class_thresholds_card(self) -> dict:
        """The card's word on where the tissue bands' thresholds came from, when not the whole scan (the default)."""
        if self.opts.class_thresholds == "scan":
            return {}
        return {"class_thresholds": "multi-Otsu thresholds from the heart frame (160 mm around the heart), applied to the whole scene"}

    def training_extra(self) -> dict:
        return {}

    # -- shared ----------------------------------------------------------------------------------
    def _fixed_batch(self, n: int = 6) -> dict:
        if hasattr(self.ds, "fixed_batch"):
            return self.ds.fixed_batch(n)
        picks = spread_picks(self.ds.index, n)
        masks = torch.from_numpy(self.ds.masks[picks].astype(np.int64))
        images = torch.from_numpy(self.ds.images[picks] * 2 - 1)[:, None]
        vendors = torch.from_numpy(self.ds.vendors[picks])
        return {"mask": masks, "image": images, "vendor": vendors, "seeds": (1234, 1235)}

    def drop_vendor(self, vendor: torch.Tensor) -> torch.Tensor:
        """A fraction of samples trained as vendor 'unknown', so that style means 'average'."""
        vendor = vendor.clone()
        drop = torch.rand(vendor.shape, generator=self.rng) < self.opts.vendor_dropout
        vendor[drop] = VENDORS.index("unknown")
        return vendor.to(self.device)

    def update_ema(self, ema: torch.nn.Module, net: torch.nn.Module) -> None:
        decay = min(self.opts.ema, (1 + self.step) / (10 + self.step))  # warm-up: short runs still average
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)

    def extra_state(self) -> dict:
        """Tensors a trainer keeps beyond networks and optimisers (running statistics of a loss); saved with the state."""
        ref = self.grid_penalty.ref if self.grid_penalty is not None else None
        extra = {} if ref is None else {"grid_ref": ref.detach().cpu()}
        if self.pretraining:  # the record of the model the run started from: --init names it, and a name can later mean other weights
            extra["pretraining"] = self.pretraining
        return extra

    def load_extra_state(self, state: dict) -> None:
        """Take back what :meth:`extra_state` saved (state written before it existed gives ``{}``)."""
        if self.grid_penalty is not None and state.get("grid_ref") is not None:
            self.grid_penalty.ref = state["grid_ref"].to(self.device)
        self._keep_pretraining(state)

    def _keep_pretraining(self, state: dict) -> None:
        """A resumed run's card names the model the run started from, not what ``--init`` names today (a model retrained
        in place, or shipped from this very run). A state saved before the whole record was kept holds only its sha256:
        where that differs, the start cannot be named and the resume is refused."""
        if not self.pretraining:
            return
        saved = state.get("pretraining")
        sha = saved["sha256"] if saved else state.get("init_sha256")
        now = self.pretraining
        if sha is None:  # a SPADE state saved before the record was kept
            self.log(f"Resuming: the run's state does not record the weights it started from; its card names what --init "
                     f"{self.opts.init} names now ({now['name']}, sha256 {now['sha256'][:12]}…).")
        elif sha != now["sha256"]:
            if not saved:
                raise CmrError(f"The run in {self.out} started from a model with sha256 {sha[:12]}…, but --init {self.opts.init} is now "
                               f"{now['name']} (sha256 {now['sha256'][:12]}…); resume it with the model it started from, or start "
                               "a new run with another --out.")
            self.log(f"Resuming: --init {self.opts.init} now names other weights (sha256 {now['sha256'][:12]}…); this run started from "
                     f"{saved['name']} (sha256 {sha[:12]}…), goes on from its own state, and its card names that start.")
        else:
            self.log(f"Resuming a run that started from {now['name']} (sha256 {sha[:12]}…).")
        if saved:
            self.pretraining = dict(saved)

    def load_init(self, info, state: dict, nets: tuple, what: str, hint: str) -> None:
        """Put the starting model's weights (``--init``) into each of ``nets``; weights that do not fit are one sentence."""
        try:
            for net in nets:
                net.load_state_dict(state)
        except RuntimeError as exc:
            raise CmrError(f"--init {self.opts.init}: the weights in {info.weights_path} do not fit this run's {what} "
                           f"({str(exc).splitlines()[0]}); {hint}.") from None

    def check_init(self, record: dict) -> None:
        """Say where the model a run starts from (``--init``) may have seen patients this run holds out."""
        theirs = record.get("held_out_case_prefixes")
        if theirs is None or not self.opts.exclude or self.opts.resume:  # a resumed run was told when it started
            return
        open_ = [p for p in self.opts.exclude if not any(str(p).startswith(str(q)) for q in theirs)]
        if open_:
            self.log(f"Note: {record['name']} did not hold out {', '.join(open_)}; where it was trained on them, they are not "
                     "held out from this model either (its card records both lists under training).")

    def _save_state(self) -> None:
        """Write the whole training state into a fresh folder, then swap it in (never half old, half new)."""
        tmp, old = self.out / "train_state.tmp", self.out / "train_state.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for key, net in self.networks().items():
            save_state(tmp / f"{key}.safetensors", net.state_dict())
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.generator.get_state(), "noise": self.rng.get_state()}
        torch.save({"optimisers": {k: o.state_dict() for k, o in self.optimisers().items()}, "rng": rng, "extra": self.extra_state()},
                   tmp / "optim.pt")
        st = {"step": self.step, "elapsed_s": self.elapsed, "kind": self.kind, "config": self.cfg.to_dict(), "options": opts_dict(self.opts),
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
        if st.get("kind", self.kind) != self.kind:
            raise CmrError(f"The run in {self.out} trains a {st.get('kind')} model, not a {self.kind} model; resume it with `train {'flow --preset layout-fine' if st.get('kind') == 'layout' else st.get('kind')}`.")
        if st.get("config") != self.cfg.to_dict():
            saved_cfg, ours = st.get("config") or {}, self.cfg.to_dict()
            diff = ", ".join(f"{k} {saved_cfg.get(k)!r}, not {ours.get(k)!r}" for k in sorted(set(saved_cfg) | set(ours))
                             if saved_cfg.get(k) != ours.get(k))
            raise CmrError(f"The run in {self.out} was trained with another architecture ({diff}); resume it with the options it "
                           "was started with (--preset, --size and the architecture flags).")
        mine = opts_dict(self.opts)
        own = getattr(self, "resume_must_match", ())
        fields = getattr(type(self.opts), "__dataclass_fields__", {})
        # a run saved before one of these options existed ran with that option's default
        saved = {**{k: fields[k].default for k in RESUME_MUST_MATCH + own if k in fields and fields[k].default is not MISSING},
                 **st.get("options", {})}
        for key in RESUME_MUST_MATCH + own:
            if key in saved and saved[key] != mine[key]:
                raise CmrError(f"The run in {self.out} was trained with --{key.replace('_', '-')} {saved[key]!r}, not {mine[key]!r}; "
                               "resume it with the same data options, or start a new run with another --out.")
        for key, net in self.networks().items():
            path = self.state_dir / f"{key}.safetensors"
            legacy = self.state_dir / f"{LEGACY_STATE_NAMES.get(key, key)}.safetensors"
            net.load_state_dict(load_state(path if path.exists() or not legacy.exists() else legacy))
        try:
            # on the CPU: random states must stay CPU byte tensors; optimisers move their state to the parameters
            opt = torch.load(self.state_dir / "optim.pt", map_location="cpu", weights_only=True)
            saved_opts = opt.get("optimisers", opt)  # runs saved before the shared trainer kept them at the top
            for key, o in self.optimisers().items():
                o.load_state_dict(saved_opts[key])
        except (RuntimeError, KeyError, OSError, ValueError, EOFError) as exc:
            raise CmrError(f"The optimiser state in {self.state_dir} cannot be read ({exc}); start a new run with another --out.") from None
        self.load_extra_state(opt.get("extra") or {})
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
            "kind": self.kind,
            "architecture": self.architecture(),
            "frame": {"size": self.opts.size, "spacing_mm": self.spacing_mm,
                      "intensity": "0.5-99.5 percentile of the volume to [0,1]; net output [-1,1]"},
            "label_scheme": "canonical",
            "vendors": list(VENDORS),
            "vendors_trained": trained_vendors,
            **self.conditioning_card(),
            **self.card_extra(),
            "training": {
                "data": summary,
                "held_out_case_prefixes": self.opts.exclude,
                "slices": len(self.ds),
                "iterations": self.step,
                "batch": self.opts.batch,
                "images_seen": self.step * self.opts.batch,
                **self.training_extra(),
                "augment": self.augment_text(),
                "vendor_dropout": self.opts.vendor_dropout,
                "ema": self.opts.ema,
                "hardware": hardware(self.device),
                "seconds": round(self.elapsed, 1),
                "torch": torch.__version__,
                "seed": self.opts.seed,
                "last_losses": self.history[-1] if self.history else None,
            },
            "terms": terms_for(summary + self.inherited_data()),
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
        state = self.networks()["ema"].state_dict()
        info = save_model(self.out, self.opts.name, state, self.card())
        if self.opts.keep_checkpoints:
            name = f"{self.opts.name}-step{self.step:06d}"
            save_model(self.out / "checkpoints", name, state, {**info.card, "name": name})
        return info

    def grid_rows(self, images: torch.Tensor) -> np.ndarray:
        """(B, C, N, N) in [-1, 1] -> (B, N, N) rows of the sample grid."""
        return images[:, 0].numpy()

    @torch.no_grad()
    def write_samples(self) -> Path:
        f = self._fixed
        rows = [self.grid_rows(f["image"])] + self.render_fixed(f)
        d = self.out / "samples"
        d.mkdir(parents=True, exist_ok=True)
        p = write_grid(d / f"step_{self.step:06d}.png", f["mask"].numpy(), rows)
        write_grid(d / "latest.png", f["mask"].numpy(), rows)
        return p

    def scene_augment(self) -> SceneAugment:
        """Scene presets: the windows' augmentation, with the run's share of in-patient windows (half unless given)."""
        share = self.opts.in_patient
        return SceneAugment() if share is None else SceneAugment(context=share)

    def augment_text(self) -> str:
        if not self.opts.augment:
            return "none"
        if self.scene_model():
            a = self.scene_augment()
            ctx = f"in-patient (context outside a {a.margin_px[0]:g}–{a.margin_px[1]:g} px margin)"
            modes = ("all fully synthetic (tissue classes)" if a.context <= 0 else f"all {ctx}" if a.context >= 1 else
                     f"{a.context:.0%} {ctx}, the rest fully synthetic (tissue classes)")
            return (f"windows of the whole-scan scene around the heart (SD {a.jitter_px:g} px; {a.anywhere:.0%} anywhere), rotation "
                    f"±{a.rotate_deg:g}°, scale {a.scale[0]}–{a.scale[1]}; {modes}")
        return "rotation ±15°, scale 0.9–1.1, shift ±6%"

    def describe_start(self) -> str:
        return f"Training a {self.kind} model"

    def _autocast(self):
        """bfloat16 mixed precision where the run uses it (``self.bf16``)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(getattr(self, "bf16", False)))

    def inherited_data(self) -> list[dict]:
        """The data of the models this one learned from (its ``--init``), whose terms its weights inherit."""
        return list(self.pretraining["data"]) if getattr(self, "pretraining", None) else []

    def before_first_step(self, batches) -> None:
        """Anything a new run does once before its first step (``batches``: the endless training batches)."""

    def step_limit(self) -> int:
        """The last step this run may take (a private run stops earlier when its privacy budget is spent)."""
        return self.opts.steps

    def limit_reason(self) -> str:
        return f"Stopping at step {self.step}."

    def run(self, progress: bool = True):
        from tqdm import tqdm

        opts = self.opts
        self.out.mkdir(parents=True, exist_ok=True)
        if self.step == 0:
            self.log(f"{self.describe_start()} on {len(self.ds)} slices from {len(self.cases)} cases, {self.device}, "
                     f"{opts.steps} steps of {opts.batch}.")
            self.write_samples()
        it = endless(self.loader)
        if self.step == 0:
            self.before_first_step(it)
        bar = tqdm(total=opts.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        acc: dict[str, list[float]] = {}
        t_last = time.perf_counter()
        deadline = None if opts.max_minutes is None else time.perf_counter() + 60 * opts.max_minutes
        restore = _stop_on_sigterm()
        try:
            while self.step < self.step_limit():
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
                    bar.set_postfix({k: rec[k] for k in self.postfix if k in rec})
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
            restore()
        if self.step < opts.steps and self.step >= self.step_limit():
            self.log(self.limit_reason())
        self._save_state()
        self.write_samples()
        self.save_model()
        return self


def _stop_on_sigterm():
    """Make SIGTERM (a scheduler's or `kill`'s stop) end training like Ctrl+C: saved, resumable. Returns the undo."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, old)
