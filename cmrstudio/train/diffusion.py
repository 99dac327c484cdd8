"""Training the on-demand models: mask-conditioned diffusion (v-prediction) or rectified flow.

Same data, run folder, resumable state and sample grids as SPADE (:mod:`cmrstudio.train.base`).
One network class (:class:`~cmrstudio.models.diffusion.CondUNet`) serves both; the
objective decides what it learns to predict (:mod:`cmrstudio.models.sampling`). The mask is
dropped (all-zero one-hot) for ``cond_drop`` of the samples so that classifier-free guidance
works at sampling time. Mixed precision (bfloat16 autocast) is used where the processor or
GPU runs it natively; the weights stay float32.

Distillation (``reflow``, flow only): starting from a trained flow model (``init``, the teacher,
kept frozen), each batch's images are not the real slices but what the teacher renders in
``reflow`` steps (its card's solver, guidance and time grid) from the batch's own noise under the
batch's conditioning; the student learns the straight path from that noise to that image (reflow,
Liu et al., 2022), so that one or two steps of it land where many steps of the teacher do. The
teacher's guidance is built into what the student learns: the student samples unguided, and its
mask is never dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from cmrstudio.engine.device import bf16_native
from cmrstudio.errors import CmrError
from cmrstudio.models.diffusion import PRESETS, CategoricalUNet, CondUNet, DiffusionConfig
from cmrstudio.models.sampling import (DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_STEPS, OBJECTIVES, check_guidance, noise_for,
                                       integrate, run_to_end, sample, sample_t, time_grid, training_loss)
from cmrstudio.models.spade import GridPenalty, MultiScaleDiscriminator, SpadeConfig, count_parameters, d_hinge, g_hinge, onehot
from cmrstudio.record import sampler_name
from cmrstudio.train.base import BaseOptions, BaseTrainer
from cmrstudio.train.common import append_log, start_from
from cmrstudio.train.spade import _f32, composite


@dataclass
class DiffusionOptions(BaseOptions):
    objective: str = "diffusion"
    out: str = "runs/diffusion"
    name: str = "diffusion"
    lr: float = 2e-4
    warmup: int = 200  # steps of linear learning-rate warm-up
    cond_drop: float | None = None  # fraction of samples trained without the mask (classifier-free guidance); 0.1, 0 with reflow
    guidance: float | None = None  # for the sample grids and the card's default (DEFAULT_GUIDANCE); not with reflow
    sample_steps: int | None = None  # steps for the grids and the card's default (objective's default when None)
    bf16: bool | None = None  # mixed precision; automatic (native bf16 only) when None
    ema: float = 0.999
    grid: float = 0.0  # weight of the period-2 grid penalty on the predicted clean image (GridPenalty; 0: off)
    init: str | None = None  # start from this model's weights (a card path or name): fine-tuning a trained model
    reflow: int = 0  # distil ``init`` (the teacher): its renders in this many steps are the targets (0: off)
    teacher: str | None = None  # with reflow: the teacher, when it is not ``init`` (a distilled student learning on)
    adversarial: float = 0.0  # weight of the discriminator's hinge loss on the predicted clean images (0: off)
    d_warmup: int = 200  # batches the discriminator learns alone on before the network's first step
    lr_d: float = 2e-4

    def __post_init__(self):
        if self.cond_drop is None:  # distilled students and the fine tissue-class prior sample unguided
            self.cond_drop = 0.0 if self.reflow or self.preset.startswith("layout") else 0.1


class DiffusionTrainer(BaseTrainer):
    presets = PRESETS
    postfix = ("loss", "grid", "d", "g_adv")
    resume_must_match = ("objective", "init", "reflow", "teacher", "adversarial")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "layout" if self.fine_layout() else self.opts.objective

    def fine_layout(self) -> bool:
        """The fine tissue-class prior (``layout-fine`` presets): flow matching over the tissue classes on 2-px cells,
        given the heart, the scan's extent and a coarse prior's layout (:class:`~cmrstudio.models.layout.FineLayout`)."""
        return self.opts.preset.startswith("layout")

    def tissue_class_model(self) -> bool:
        return self.fine_layout() or super().tissue_class_model()

    def make_dataset(self):
        if not self.fine_layout():
            return super().make_dataset()
        from cmrstudio.data.dataset import FineLayoutDataset, SceneDataset
        from cmrstudio.data.frame import LIVE_SIZE, LIVE_SPACING_MM
        from cmrstudio.models.layout import FINE_FACTOR

        o = self.opts
        self.spacing_mm = LIVE_SPACING_MM * FINE_FACTOR  # one cell of the tissue-class map
        scenes = SceneDataset(self.cases, window=LIVE_SIZE, spacing_mm=LIVE_SPACING_MM, augment=self.scene_augment() if o.augment else None,
                              seed=o.seed, require_labels=o.require_labels, layout_prior=self.layout_prior(coarse=True),
                              class_thresholds=o.class_thresholds)
        return FineLayoutDataset(scenes, cells=o.size, factor=FINE_FACTOR, seed=o.seed, augment=o.augment)

    def conditioning_card(self) -> dict:
        if not self.fine_layout():
            return super().conditioning_card()
        from cmrstudio.data.scene import LAYOUT_CLASSES
        from cmrstudio.models.layout import FINE_FACTOR

        return {"conditioning": {
            "scheme": "layout-fine-v1", "cell_px": FINE_FACTOR,
            "inputs": ["LV", "MYO", "RV", "inside-scan", *(f"coarse:{c}" for c in LAYOUT_CLASSES)],
            "outputs": [f"tissue:{c}" for c in LAYOUT_CLASSES],
            "coarse_prior": {"name": self.layout_info.name, "sha256": self.layout_info.card["sha256"]},
            "heart_classes": self.ds.heart_classes(),
            "what": "the slice's own tissue classes on cells of 2 frame pixels, given the heart's label fractions and the scan's "
                    "extent on those cells and the coarse prior's layout (training: its projection of the slice's layout; "
                    "rendering: its sample given the painted heart); a render takes each cell's most likely class",
            **self.class_thresholds_card()}}

    def cond(self, batch: dict) -> torch.Tensor:
        """The conditioning maps of a batch: its 'cond' (scene models) or the mask's one-hot."""
        return (batch["cond"] if "cond" in batch else onehot(batch["mask"])).to(self.device)

    def grid_rows(self, images: torch.Tensor) -> np.ndarray:
        if images.shape[1] == 1:
            return images[:, 0].numpy()
        frac = (images.float().clamp(-1, 1) + 1) / 2  # tissue classes, outside dark .. bright
        levels = torch.linspace(-1, 1, images.shape[1])[None, :, None, None]
        return (frac * levels).sum(1).numpy()

    def check_options(self) -> None:
        o = self.opts
        if o.objective not in OBJECTIVES:
            raise CmrError(f"The objective {o.objective!r} is not known; use one of {', '.join(OBJECTIVES)}.")
        try:
            DiffusionConfig.from_dict({**PRESETS[o.preset].to_dict(), "size": o.size})
        except ValueError:
            base = PRESETS[o.preset]
            unit = base.patch * 2 ** (len(base.mults) - 1)
            raise CmrError(f"--size {o.size} must be a multiple of {unit} for the {o.preset} preset, like 64, 128 or 256.") from None
        if self.fine_layout() and (o.objective != "flow" or o.reflow or o.adversarial or o.grid or o.cond_drop or o.guidance is not None):
            raise CmrError(f"--preset {o.preset} is the fine tissue-class prior: train it with `cmrstudio train flow`, without "
                           "--reflow, --adversarial, --grid-loss, --cond-drop or --guidance (it samples unguided).")
        if not 0 <= o.cond_drop < 1:
            raise CmrError(f"--cond-drop {o.cond_drop} must be at least 0 and below 1.")
        if o.guidance is not None:
            check_guidance(o.guidance)
        if o.sample_steps is not None and not (isinstance(o.sample_steps, int) and 1 <= o.sample_steps <= MAX_STEPS):
            raise CmrError(f"--sample-steps {o.sample_steps!r} must be a whole number of sampling steps, 1 to {MAX_STEPS}.")
        if not o.grid >= 0:
            raise CmrError(f"--grid-loss {o.grid} must be 0 (off) or above.")
        if o.reflow:
            if isinstance(o.reflow, bool) or not isinstance(o.reflow, int) or not 0 < o.reflow <= MAX_STEPS:
                raise CmrError(f"--reflow {o.reflow!r} must be a whole number of the teacher's sampling steps, 1 to {MAX_STEPS} "
                               "(8–32 typical; 0: off).")
            if o.objective != "flow":
                raise CmrError("--reflow distils a rectified-flow model; train it with `cmrstudio train flow`.")
            if not o.init:
                raise CmrError("--reflow needs the flow model to distil: give it with --init (a card path or name).")
            if o.cond_drop > 0:
                raise CmrError(f"--cond-drop {o.cond_drop} does not fit --reflow: the distilled model samples unguided (its teacher's "
                               "guidance is built in); leave --cond-drop out.")
            if o.guidance is not None:
                raise CmrError(f"--guidance {o.guidance} does not fit --reflow: the teacher renders with its card's guidance and the "
                               "distilled model samples unguided; leave --guidance out.")
        elif o.teacher:
            raise CmrError(f"--teacher {o.teacher} is for distillation; give --reflow (the teacher's steps) with it, or leave it out.")
        if not o.adversarial >= 0:
            raise CmrError(f"--adversarial {o.adversarial} must be 0 (off) or above (0.05–0.5 typical).")
        if o.adversarial and not (isinstance(o.d_warmup, int) and o.d_warmup >= 0):
            raise CmrError(f"--d-warmup {o.d_warmup!r} must be a whole number of batches, 0 or more.")
        if o.adversarial and not o.lr_d > 0:
            raise CmrError(f"--lr-d {o.lr_d} must be above 0 (2e-4 is usual).")

    def build(self) -> None:
        o = self.opts
        self.cfg = DiffusionConfig.from_dict({**PRESETS[o.preset].to_dict(), "size": o.size})
        net_class = CategoricalUNet if self.fine_layout() else CondUNet
        self.net = net_class(self.cfg).to(self.device)
        self.ema = net_class(self.cfg).to(self.device).eval()
        self.ema.load_state_dict(self.net.state_dict())
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, weight_decay=0.0)
        self.bf16 = bf16_native(self.device) if o.bf16 is None else bool(o.bf16)
        self.steps_default = int(o.sample_steps if o.sample_steps is not None else DEFAULT_STEPS[o.objective])
        # without mask dropout the unconditional branch was never trained: guidance would be meaningless; a distilled
        # student has its teacher's guidance built in
        self.guidance = (DEFAULT_GUIDANCE if o.guidance is None else o.guidance) if o.cond_drop > 0 and not o.reflow else 1.0
        self.grid_penalty = GridPenalty() if o.grid else None
        self.D = self.opt_d = None
        if o.adversarial:
            self.d_cfg = SpadeConfig(size=o.size, n_labels=self.cfg.n_labels, n_vendors=self.cfg.n_vendors,
                                     cond_channels=self.cfg.cond_channels, ndf=32, num_d=2, d_layers=3, d_spectral_norm=True, d_stem=True)
            self.D = MultiScaleDiscriminator(self.d_cfg).to(self.device)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=o.lr_d, betas=(0.0, 0.999))
        self.teacher = None
        self.teacher_record = None
        self.pretraining = self._load_init() if o.init else None

    def _load_init(self) -> dict:
        """Start both the trained and the EMA network from a trained model of the same objective and architecture."""
        o = self.opts
        kind = self.kind  # a flow or diffusion model, or a fine tissue-class prior (kind layout)
        info, state, record = start_from(o.init, (kind,), f"{kind} model", self.cfg.to_dict())
        record.pop("datasets")
        self.check_init(record)
        self.load_init(info, state, (self.net, self.ema), "network", f"train with the same --preset and --size as {info.name}")
        if not o.resume:  # a resumed run says what it started from once its state is read
            self.log(f"Starting from {info.name} (sha256 {record['sha256'][:12]}…, {record['iterations']} iterations).")
        if o.reflow:
            if o.teacher:
                frame = {k: v for k, v in self.cfg.to_dict().items() if k in ("size", "cond_channels", "n_labels", "n_vendors", "channels")}
                tinfo, _, trecord = start_from(o.teacher, ("flow",), "flow model", frame, option="--teacher")
                trecord.pop("datasets")
                self.check_init(trecord)
                self._make_teacher(tinfo, trecord)
            else:
                self._make_teacher(info, record)
        return record

    def _make_teacher(self, info, record: dict) -> None:
        """The frozen teacher of a distillation: the model opened as the HQ renderer opens it, sampling as its card says
        (solver, guidance, time grid; a bad card is one sentence naming it) in ``reflow`` steps."""
        from cmrstudio.engine.builtin import open_hq

        self.teacher = open_hq(info, device=str(self.device), steps=self.opts.reflow, bf16=self.bf16)
        self.teacher_record = record
        for p in self.teacher.net.parameters():
            p.requires_grad_(False)
        self.student_times = torch.tensor(time_grid(self.steps_default)[:-1])  # the times the student's steps start at
        t = self.teacher
        self.log(f"Distilling {info.name}: targets are its renders in {t.steps} steps ({sampler_name(t.solver, t.time_shift)}, "
                 f"guidance {t.guidance:g}).")

    def reflow_t(self, n: int) -> torch.Tensor:
        """Times of a distillation batch: uniform on [0, 1], half of them snapped to the student's own sampling grid."""
        t = torch.rand(n, generator=self.rng)
        pick = self.student_times[torch.randint(len(self.student_times), (n,), generator=self.rng)]
        return torch.where(torch.rand(n, generator=self.rng) < 0.5, pick, t)

    def teacher_images(self, cond: torch.Tensor, vendor: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the teacher renders from ``noise`` under this conditioning, in the network's [-1, 1] range, on the device."""
        t = self.teacher
        return integrate(t.net, "flow", cond, vendor, noise, t.steps, t.guidance, t.solver, bf16=t.bf16, time_shift=t.time_shift,
                         shifts=t.shifts, still=getattr(t, "still", None))

    def extra_state(self) -> dict:
        extra = super().extra_state()
        if self.teacher_record:
            extra["teacher_sha256"] = self.teacher_record["sha256"]
        if getattr(self, "d_warmup_record", None):
            extra["d_warmup_record"] = self.d_warmup_record
        return extra

    def inherited_data(self) -> list[dict]:
        return super().inherited_data() + (list(self.teacher_record["data"]) if self.teacher_record else [])

    def load_extra_state(self, state: dict) -> None:
        saved_teacher = state.get("teacher_sha256")  # the teacher is used at every step: another one cannot go on
        if self.teacher_record and saved_teacher and saved_teacher != self.teacher_record["sha256"]:
            raise CmrError(f"The run in {self.out} distilled a teacher with sha256 {saved_teacher[:12]}…, but the teacher is now "
                           f"{self.teacher_record['name']} (sha256 {self.teacher_record['sha256'][:12]}…); resume it with the teacher "
                           "it started with, or start a new run with another --out.")
        super().load_extra_state(state)
        if state.get("d_warmup_record"):
            self.d_warmup_record = dict(state["d_warmup_record"])

    def networks(self) -> dict:
        return {"network": self.net, "ema": self.ema, **({"discriminator": self.D} if self.D is not None else {})}

    def optimisers(self) -> dict:
        return {"opt": self.opt, **({"opt_d": self.opt_d} if self.opt_d is not None else {})}

    def describe_start(self) -> str:
        return (f"Training a {self.kind} model ({self.opts.preset}, {count_parameters(self.net) / 1e6:.2f} M parameters"
                f"{', bf16 mixed precision' if self.bf16 else ''})")

    def architecture(self) -> dict:
        what = ("heart one-hot, tissue-class fractions, context image and its validity" if self.scene_model()
                else "heart fractions, scan extent and the coarse layout on 2-px cells" if self.fine_layout() else "one-hot mask")
        norm = "PixelNorm (each pixel's channels)" if self.cfg.norm == "pixel" else "GroupNorm"
        return {
            "class": f"cmrstudio.models.diffusion.{type(self.net).__name__}",
            "preset": self.opts.preset,
            "options": self.cfg.to_dict(),
            "parameters": count_parameters(self.net),
            "conditioning": f"{what} concatenated at the input and spatially-adaptive normalisation in every decoder block; "
                            "vendor embedding added to the time embedding"
                            + ("; classifier-free guidance (conditioning dropped)" if self.opts.cond_drop > 0 else ""),
            "normalisation": f"{norm} (decoder: {norm} + per-pixel scale/shift from the conditioning)",
        }

    def card_extra(self) -> dict:
        o = self.opts
        if o.objective == "diffusion":
            process = {"objective": "diffusion", "schedule": "cosine VP, alpha=cos(pi t/2), sigma=sin(pi t/2), t in [0,1]",
                       "prediction": "v", "sampler": "ddim"}
        elif self.fine_layout():
            process = {"objective": "flow", "path": "rectified flow x_t=(1-t) x0 + t eps over the classes' one-hot in [-1, 1]",
                       "prediction": "class probabilities p (cross-entropy); velocity (x_t - (2p - 1)) / t when sampling",
                       "t_distribution": "logit-normal(0,1)", "sampler": "euler; each cell takes its most likely class at the end"}
        else:
            process = {"objective": "flow", "path": "rectified flow x_t=(1-t) x0 + t eps", "prediction": "velocity eps - x0",
                       "t_distribution": "uniform, half of each batch at the model's own sampling times (distillation)"
                       if o.reflow else "logit-normal(0,1)", "sampler": "euler"}
        return {"process": process,
                "sampling": {"steps": self.steps_default, "guidance": self.guidance, "solver": process["sampler"],
                             "guidance_null": "all-zero mask"}}

    def training_extra(self) -> dict:
        o = self.opts
        extra = {"lr": o.lr, "warmup": o.warmup, "cond_drop": o.cond_drop, "precision": "bf16 autocast" if self.bf16 else "fp32",
                 **({"grid_period2": o.grid} if o.grid else {}), **({"pretraining": self.pretraining} if self.pretraining else {})}
        if self.teacher is not None:
            extra["distillation"] = {
                "method": "reflow (Liu et al., 2022): the straight path from each noise to the image the teacher renders from it",
                "teacher": self.teacher_record["name"], "teacher_sha256": self.teacher_record["sha256"], "teacher_steps": self.teacher.steps,
                "teacher_held_out_case_prefixes": self.teacher_record.get("held_out_case_prefixes"),
                "teacher_solver": self.teacher.solver, "teacher_guidance": self.teacher.guidance, "teacher_time_shift": self.teacher.time_shift,
                "teacher_shifts": self.teacher.shifts,
                "targets": "teacher renders" + (" and, through the discriminator, the real slices" if self.D is not None
                                                 else " (the real slices give only the conditioning)")}
        if self.D is not None:
            extra["adversarial"] = {
                "weight": o.adversarial, "lr_d": o.lr_d, "loss": "hinge",
                "d_warmup": (getattr(self, "d_warmup_record", None) or {}).get("batches", 0),
                **({"warmup_record": self.d_warmup_record} if getattr(self, "d_warmup_record", None) else {}),
                "discriminator": "conditional multi-scale PatchGAN (2 scales, 3 layers, spectral norm, stride-1 stem): real slices "
                                 "against the clean images the predictions point to (in this patient put into the real surroundings)",
                "discriminator_options": {k: self.d_cfg.to_dict()[k] for k in ("ndf", "num_d", "d_layers", "d_spectral_norm", "d_stem")},
                "discriminator_parameters": count_parameters(self.D)}
        return extra

    def render_fixed(self, f: dict) -> list[np.ndarray]:
        oh = self.cond(f)
        v = f["vendor"].to(self.device)
        size, ch = f["image"].shape[-1], f["image"].shape[1]
        rows = []
        runs = [(oh, seed) for seed in f["seeds"]]
        if "cond_context" in f:  # in this patient: the real surroundings as context
            runs.append((f["cond_context"].to(self.device), f["seeds"][0]))
        for c, seed in runs:
            noise = noise_for(seed, size, len(c), ch).to(self.device)
            rows.append(self.grid_rows(self._render(self.ema, c, v, noise).cpu()))
        return rows

    @torch.no_grad()
    def fixed_loss(self, ema: bool = False, n_t: int = 8) -> float:
        """The objective's loss on the fixed sample masks at ``n_t`` evenly spaced times with fixed noise (deterministic)."""
        f = self._fixed
        net = self.ema if ema else self.net
        g = torch.Generator().manual_seed(4321)
        x0 = f["image"].to(self.device)
        oh = self.cond(f)
        v = f["vendor"].to(self.device)
        losses = []
        for t in (torch.arange(n_t) + 0.5) / n_t:
            noise = torch.randn(x0.shape, generator=g).to(self.device)
            tt = torch.full((len(x0),), float(t), device=self.device)
            losses.append(float(training_loss(net, self.opts.objective, x0, oh, v, tt, noise)))
        return float(np.mean(losses))

    def train_step(self, batch: dict) -> dict:
        o = self.opts
        x0 = batch["image"].to(self.device)
        oh = self.cond(batch)
        vendor = self.drop_vendor(batch["vendor"])
        b = x0.shape[0]
        keep = (torch.rand(b, generator=self.rng) >= o.cond_drop).to(self.device, oh.dtype)
        oh = oh * keep[:, None, None, None]
        t = (sample_t(o.objective, b, self.rng) if self.teacher is None else self.reflow_t(b)).to(self.device)
        noise = torch.randn(x0.shape, generator=self.rng).to(self.device)
        real = x0
        if self.teacher is not None:  # distillation: the teacher's render of this very noise is the target
            x0 = self.teacher_images(oh, vendor, noise)
        for g in self.opt.param_groups:
            g["lr"] = o.lr * min(1.0, (self.step + 1) / max(1, o.warmup))
        out = {}
        with self._autocast():
            if self.grid_penalty is None and self.D is None:
                loss = total = training_loss(self.net, o.objective, x0, oh, vendor, t, noise)
            else:  # losses on the clean images the predictions point to
                loss, x0_pred = training_loss(self.net, o.objective, x0, oh, vendor, t, noise, with_x0=True)
                total = loss
                if self.grid_penalty is not None:  # against a period-2 grid
                    total = total + o.grid * self.grid_penalty(x0_pred)
                    out["grid"] = self.grid_penalty.power
        if self.D is not None:
            total = total + self._adversarial(x0_pred, real, oh, vendor, out)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.update_ema(self.ema, self.net)
        return {"loss": float(loss.detach()), **out, "grad_norm": float(gn)}

    def before_first_step(self, batches) -> None:
        """The discriminator's warm-up: ``d_warmup`` batches of real slices against the network's own renders of their
        conditioning (its sampling steps from fresh noise; in this patient inside the real surroundings)."""
        if self.D is None or not self.opts.d_warmup:
            return
        self.log(f"Warming up the discriminator on {self.opts.d_warmup} batches of real slices and this network's renders.")
        t0 = time.perf_counter()
        losses = []
        for k in range(self.opts.d_warmup):
            b = next(batches)
            real, cond, vendor = b["image"].to(self.device), self.cond(b), b["vendor"].to(self.device)
            noise = torch.randn(real.shape, generator=self.rng).to(self.device)
            with torch.no_grad():
                renders = self._render(self.net, cond, vendor, noise)
            loss_d = self._d_step(real, self._as_fake(renders, cond, real), cond, vendor)
            losses.append(loss_d)
        self.elapsed += time.perf_counter() - t0  # the card's seconds include the warm-up
        first, last = np.mean(losses[:max(1, len(losses) // 10)]), np.mean(losses[-max(1, len(losses) // 10):])
        self.d_warmup_record = {"batches": len(losses), "d_loss_first_tenth": round(float(first), 4), "d_loss_last_tenth": round(float(last), 4)}
        append_log(self.out / "log.jsonl", {"step": 0, "d_warmup": len(losses), "d": round(float(last), 4)})
        self.log(f"Discriminator warmed up: hinge loss {first:.3f} -> {last:.3f} (2 = cannot tell).")

    def _adversarial(self, x0_pred: torch.Tensor, real: torch.Tensor, cond: torch.Tensor, vendor: torch.Tensor, out: dict) -> torch.Tensor:
        """One discriminator step (real slices against the predicted clean images), then the network's weighted hinge loss.
        In this patient the prediction is put into the real surroundings first."""
        fake = self._as_fake(x0_pred, cond, real)
        out["d"] = self._d_step(real, fake.detach(), cond, vendor)
        self.D.requires_grad_(False)  # the network's loss moves the network only
        try:
            with self._autocast():
                d_fake = self.D(fake, cond, vendor)
            adv = g_hinge(_f32(d_fake))
        finally:
            self.D.requires_grad_(True)
        out["g_adv"] = float(adv.detach())
        return self.opts.adversarial * adv

    def _as_fake(self, x0: torch.Tensor, cond: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """What the discriminator is shown of a render: in [-1, 1], and in this patient inside the real surroundings."""
        x0 = x0.float().clamp(-1, 1)
        return composite(x0, cond, real) if self.scene_model() else x0

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor, vendor: torch.Tensor) -> float:
        """One discriminator step, real slices against ``fake`` (detached), at the rate asked for now (also when a
        resumed optimiser saved another); its hinge loss."""
        with self._autocast():
            d_real, d_fake = self.D(real, cond, vendor), self.D(fake, cond, vendor)
        loss_d = d_hinge(_f32(d_real), _f32(d_fake))
        for g in self.opt_d.param_groups:
            g["lr"] = self.opts.lr_d
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return float(loss_d.detach())

    def _render(self, net, cond: torch.Tensor, vendor: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``net``'s render of ``noise`` under this conditioning in its default steps and guidance, in [-1, 1], shaped as
        the noise."""
        img = run_to_end(sample(net, self.opts.objective, cond, vendor, noise, self.steps_default, self.guidance, bf16=self.bf16))
        return torch.from_numpy(img * 2 - 1).reshape(noise.shape).to(self.device)
