"""Training a SPADE generator on any folder the readers understand (and/or the phantom).

The run folder, resumable state, sample grids and loop are shared with the other
generators (:mod:`cmrstudio.train.base`). Losses: hinge GAN, discriminator feature
matching, and an L1 on 4×-downsampled images (instead of the VGG perceptual loss of the
SPADE paper: no ImageNet weights offline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch.utils.data import DataLoader

from cmrstudio.errors import CmrError
from cmrstudio.models.spade import (
    PRESETS,
    LossWeights,
    MultiScaleDiscriminator,
    SpadeConfig,
    build_generator,
    count_parameters,
    d_hinge,
    feature_matching,
    g_hinge,
    GridPenalty,
    lowpass_l1,
    onehot,
    region_weights,
)
from cmrstudio.train.base import BaseOptions, BaseTrainer
from cmrstudio.train.common import PUBLIC_DATASETS, data_summary, endless, start_from


@dataclass
class TrainOptions(BaseOptions):
    out: str = "runs/spade"
    name: str = "spade"
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    fm: float = 10.0
    lowpass: float = 10.0
    grid: float = 0.0  # weight of the period-2 grid penalty on the generator's output (GridPenalty; 0: off)
    mode_seeking: float = 0.0  # weight of the mode-seeking loss (two latents per mask must give two images; 0: off)
    dp_epsilon: float | None = None  # differentially private training (DP-SGD, Opacus) to this epsilon
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0  # per-sample gradient clipping bound
    dp_noise: float | None = None  # noise multiplier; calibrated to reach dp_epsilon at --steps when None
    dp_architecture: bool = False  # the DP-compatible discriminator (GroupNorm, no spectral norm) without DP: public pre-training
    init: str | None = None  # start from a public model's weights (a card): public pre-training, then (private) fine-tuning
    bf16: bool | None = False  # scene models: bfloat16 autocast for the networks (None: where native); losses stay float32
    d_warmup: int = 0  # first steps in which only the discriminator learns (a fresh one beside an --init generator)
    g_warmup: int = 0  # generator steps (after d_warmup) over which its learning rate rises linearly to lr_g (0: lr_g from the first)
    d_groupnorm: bool = False  # GroupNorm after each inner discriminator conv, beside spectral norm (akin to SPADE's spectral-instance norm)
    adv_region: bool = False  # scene presets: hinge losses averaged over the repainted region of in-patient windows (region_weights)
    critic: float = 0.0  # weight of a second, image-level discriminator (the machine reader's CNN, no spectral norm; 0: off)
    lr_critic: float = 1e-3  # its learning rate (the machine reader's)
    critic_blur: bool = False  # the critic sees the image through a [1 2 1] blur: it cannot push a period-2 grid either way
    feature_critic: float = 0.0  # weight of a critic on the frozen seg-cmr's feature statistics (FeatureCritic; 0: off)


# Options of the discriminator only: a generator fits whatever these are.
D_OPTIONS = ("ndf", "num_d", "d_layers", "d_spectral_norm", "d_groupnorm", "d_stem")


class SpadeTrainer(BaseTrainer):
    kind = "spade"
    presets = PRESETS
    postfix = ("d", "g_adv", "lowpass", "ms", "critic", "fcritic_acc")
    resume_must_match = ("init", "dp_architecture", "fm", "lowpass", "mode_seeking", "adv_region", "critic", "critic_blur",
                         "feature_critic")

    def check_options(self) -> None:
        try:
            SpadeConfig(size=self.opts.size).n_up
        except ValueError:
            raise CmrError(f"--size {self.opts.size} must be 8 times a power of two, like 64, 128 or 256.") from None
        o = self.opts
        for flag, value in (("--grid-loss", o.grid), ("--fm", o.fm), ("--lowpass", o.lowpass), ("--mode-seeking", o.mode_seeking),
                            ("--critic", o.critic), ("--feature-critic", o.feature_critic)):
            if not (math.isfinite(value) and value >= 0):
                raise CmrError(f"{flag} {value} must be 0 (off) or a finite weight above it.")
        if not (math.isfinite(o.lr_critic) and o.lr_critic > 0):
            raise CmrError(f"--lr-critic {o.lr_critic} must be a finite learning rate above 0 (1e-3 by default).")
        if o.mode_seeking and o.dp_epsilon is not None:
            raise CmrError("--mode-seeking renders every training mask twice, so one slice would count twice in a private step; "
                           "use it in the public pre-training (--init) and train the private run without it.")
        if o.workers and o.dp_epsilon is not None:
            raise CmrError("--workers is not available with --dp-epsilon: the private run's Poisson samples are drawn and augmented in the "
                           "training process; leave --workers out.")
        if o.grid and o.dp_epsilon is not None:
            raise CmrError("--grid-loss couples the images of a batch, which differentially private training cannot account for; "
                           "train without --grid-loss, or without --dp-epsilon.")
        if o.critic_blur and not o.critic:
            raise CmrError("--critic-blur changes what the critic sees, but there is no critic; give --critic W (0.1-1.5) too.")
        if o.critic and o.dp_epsilon is not None:
            raise CmrError("--critic adds a discriminator that a private run does not account for; leave --critic out with --dp-epsilon.")
        if o.feature_critic and o.dp_epsilon is not None:
            raise CmrError("--feature-critic adds a discriminator that a private run does not account for; leave --feature-critic out "
                           "with --dp-epsilon.")
        if o.adv_region:
            why = ("only scene presets train on; use --preset scene, or leave --adv-region out for --preset " + o.preset
                   if not self.scene_model() else
                   "--in-patient 0 leaves out; give a share above 0, or leave --adv-region out" if o.in_patient == 0 else
                   "a private run does not train on; leave --adv-region out with --dp-epsilon" if o.dp_epsilon is not None else None)
            if why:
                raise CmrError(f"--adv-region weighs the repainted region of in-patient windows, which {why}.")
        if not 0 <= o.d_warmup < o.steps:
            raise CmrError(f"--d-warmup {o.d_warmup} must be 0 (off) or a number of steps below --steps {o.steps}, "
                           "so that the generator trains after it.")
        if not 0 <= o.g_warmup <= o.steps - o.d_warmup:
            raise CmrError(f"--g-warmup {o.g_warmup} must be 0 (off) or a number of generator steps up to the {o.steps - o.d_warmup} "
                           "that --steps leaves after --d-warmup.")
        if o.d_warmup and o.dp_epsilon is not None:
            raise CmrError("--d-warmup is not available with --dp-epsilon: every private step releases both networks' updates; "
                           "leave --d-warmup out.")
        if o.dp_epsilon is not None:
            if not o.dp_epsilon > 0:
                raise CmrError(f"--dp-epsilon {o.dp_epsilon} must be above 0 (smaller is more private; 1 to 10 is usual).")
            if not 0 < o.dp_delta < 1:
                raise CmrError(f"--dp-delta {o.dp_delta} must lie between 0 and 1 (well below 1/number of patients, like 1e-5).")
            if not o.dp_max_grad_norm > 0:
                raise CmrError(f"--dp-max-grad-norm {o.dp_max_grad_norm} must be above 0.")
            if o.dp_noise is not None and not o.dp_noise > 0:
                raise CmrError(f"--dp-noise {o.dp_noise} must be above 0.")
            if o.resume:
                raise CmrError("--resume does not continue a differentially private run (its privacy accounting starts afresh); start a new run.")

    @property
    def private(self) -> bool:
        return self.opts.dp_epsilon is not None

    def build(self) -> None:
        opts = self.opts
        extra = ({"d_spectral_norm": False, "d_groupnorm": True} if self.private or opts.dp_architecture else
                 {"d_groupnorm": True} if opts.d_groupnorm else {})
        self.cfg = SpadeConfig.from_dict({**PRESETS[opts.preset].to_dict(), "size": opts.size, **extra})
        self.G = build_generator(self.cfg).to(self.device)
        self.D = MultiScaleDiscriminator(self.cfg).to(self.device)
        self.G_ema = build_generator(self.cfg).to(self.device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        for p in self.G_ema.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=opts.lr_g, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=opts.lr_d, betas=(0.0, 0.999))
        self.C = self.opt_c = None
        if opts.critic:
            from cmrstudio.study.machine import ClassifierConfig, RealSynthCNN

            self.C = RealSynthCNN(ClassifierConfig(size=opts.size, blur=opts.critic_blur)).to(self.device)
            self.opt_c = torch.optim.Adam(self.C.parameters(), lr=opts.lr_critic, betas=(0.0, 0.999))
        self.Fc = self.opt_f = self.feature_critic_from = None
        if opts.feature_critic:
            self._build_feature_critic()
        self.weights = LossWeights(fm=opts.fm, lowpass=opts.lowpass, grid=opts.grid)
        self.grid_penalty = GridPenalty() if opts.grid else None
        from cmrstudio.engine.device import bf16_native

        on = bf16_native(self.device) if opts.bf16 is None else bool(opts.bf16)
        self.bf16 = on and self.device.type in ("cpu", "cuda") and not self.private
        self.pretraining = self._load_init() if opts.init else None
        self.dp = None
        if self.private:
            self._make_private()

    def _build_feature_critic(self) -> None:
        """--feature-critic: a linear head on the Gram matrices of the shipped segmenter's first encoder levels (frozen)."""
        from cmrstudio.models.registry import build_model, get_model
        from cmrstudio.models.spade import FeatureCritic

        info = get_model("seg-cmr", kind="segmenter")
        self.Fc = FeatureCritic(build_model(info, torch.device("cpu"))).to(self.device)
        if not self.opts.resume:  # a resumed run reads its standardisation back with the head
            pick = np.random.default_rng(self.opts.seed).choice(len(self.ds), min(128, len(self.ds)), replace=False)
            self.Fc.calibrate(torch.stack([torch.as_tensor(self.ds[int(i)]["image"]) for i in pick]).float().to(self.device))
        self.opt_f = torch.optim.Adam(self.Fc.head.parameters(), lr=self.opts.lr_critic, betas=(0.0, 0.999))
        self.feature_critic_from = {"name": info.name, "sha256": info.card["sha256"]}

    # -- public pre-training ---------------------------------------------------------------------
    def _load_init(self) -> dict:
        """Start from a public model: its (EMA) generator weights for both the trained and the EMA generator, and its
        discriminator when its run folder kept one (``train_state/discriminator.safetensors``) of the same architecture.
        Returns the card's ``training.pretraining`` record."""
        opts = self.opts
        info, state, record = start_from(opts.init, ("spade",), "SPADE generator", self.cfg.to_dict(), ignore=D_OPTIONS)
        theirs, mine = dict(info.card["architecture"]["options"]), self.cfg.to_dict()
        seen = record.pop("datasets")
        self.check_init(record)
        private_seen = [d for d in seen if d not in PUBLIC_DATASETS]
        if self.private and not seen:
            raise CmrError(f"--init {opts.init}: the card of {info.name} does not say what data it was trained on, so a private "
                           "fine-tuning from it cannot be called private; pre-train on public data (sunnybrook, --phantom) with this version.")
        if private_seen and self.private:
            raise CmrError(f"--init {opts.init}: {info.name} was trained on {', '.join(private_seen)}, not only on public data "
                           f"({', '.join(sorted(PUBLIC_DATASETS))}), so a private fine-tuning from it would not be private; "
                           "pre-train on public data only, or train privately from scratch.")
        from cmrstudio.models.checkpoint import adversaries_of

        self.load_init(info, state, (self.G, self.G_ema), "generator", "pre-train with the same --preset and --size")
        state_dir = adversaries_of(info.card_path)
        run = "the public run" if record["public_only"] else f"{info.name}'s run"  # public: pre-training for a private run
        d_path = state_dir / "discriminator.safetensors"
        other = [k for k in D_OPTIONS if theirs.get(k, mine[k]) != mine[k]]
        if other and d_path.exists():
            d_from = f"fresh (the discriminator of {run} has another architecture: " + ", ".join(f"{k} {theirs.get(k)!r}" for k in other) + ")"
        else:
            d_from = _take_from_run(self.D, d_path, f"the discriminator of {run}")
        # --critic: the critic of the run the model comes from goes on too, where it kept one
        c_from = _take_from_run(self.C, state_dir / "critic.safetensors", f"the critic of {run}") if self.C is not None else None
        if self.Fc is not None:  # its encoder is the segmenter's either way; only the head can come from the run
            f_from = _take_from_run(self.Fc, state_dir / "feature_critic.safetensors", f"the feature critic of {run}")
            c_from = f"{c_from}; feature critic: {f_from}" if c_from else f_from
        if not opts.resume:  # a resumed run says what it started from once its state is read
            self.log(f"Starting from {info.name} (sha256 {info.card['sha256'][:12]}…; trained on {', '.join(seen) or 'unknown data'}); "
                     f"discriminator: {d_from}" + (f"; critic: {c_from}." if c_from else "."))
        public = record["public_only"]
        return {
            **record,
            "discriminator": d_from,
            **({"critic": c_from} if c_from else {}),
            "privacy": ("The pre-training saw public data only (" + ", ".join(seen) + "); the differential-privacy accounting of this model "
                        "covers only its fine-tuning on the private data under training.data." if self.private else
                        ("The pre-training saw public data only (" + ", ".join(seen) + "); " if public else
                         "The pre-training saw " + (", ".join(seen) or "data its card does not name") + ", not only public data; ")
                        + "this fine-tuning is not differentially private either."),
        }

    # -- differential privacy --------------------------------------------------------------------
    def _make_private(self) -> None:
        """DP-SGD (Opacus) on both networks: every gradient that a training image or mask reaches is clipped
        per sample and noised. The discriminator sees real images; the generator sees real masks (and real
        images through the feature-matching and low-pass losses), so both are private. Each step releases two
        noised gradients, each on its own Poisson sample of the data; one RDP accountant composes them."""
        import warnings

        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators import ModuleValidator

        # Opacus's per-sample hooks on modules whose inputs need no gradient (the first layers): harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)

        opts = self.opts
        for name, net in (("generator", self.G), ("discriminator", self.D)):
            errors = ModuleValidator.validate(net, strict=False)
            if errors:
                raise CmrError(f"The {name} cannot be trained privately: {errors[0]}.")
        n = len(self.ds)
        q = min(1.0, opts.batch / n)
        noise = opts.dp_noise or get_noise_multiplier(target_epsilon=opts.dp_epsilon, target_delta=opts.dp_delta, sample_rate=q,
                                                      steps=2 * opts.steps, accountant="rdp")
        self.engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        gen = torch.Generator().manual_seed(opts.seed + 11)
        loader = lambda: DataLoader(self.ds, batch_size=opts.batch, shuffle=False)  # noqa: E731  (Poisson-sampled by Opacus)
        self.Gp, self.opt_g, g_loader = self.engine.make_private(module=self.G, optimizer=self.opt_g, data_loader=loader(), noise_multiplier=noise,
                                                                 max_grad_norm=opts.dp_max_grad_norm, poisson_sampling=True, noise_generator=gen)
        self.Dp, self.opt_d, d_loader = self.engine.make_private(module=self.D, optimizer=self.opt_d, data_loader=loader(), noise_multiplier=noise,
                                                                 max_grad_norm=opts.dp_max_grad_norm, poisson_sampling=True, noise_generator=gen)
        from torch.utils.data import default_collate

        for dl in (g_loader, d_loader):
            # Should the first Poisson sample be empty, Opacus builds an empty batch from the first batch's structure, or
            # else from a dataset item's (a dict here, which it cannot): give it the structure, with no data in it.
            if getattr(dl.collate_fn, "first_batch", 0) is None:
                state = self.ds.rng.bit_generator.state  # an item is augmented: leave the run's random stream as it was
                dl.collate_fn.first_batch = {k: v[:0] for k, v in default_collate([self.ds[0]]).items()}
                self.ds.rng.bit_generator.state = state
        self.loader = d_loader  # the discriminator's batches drive the loop; the generator draws its own
        self.g_loader = g_loader
        self._g_batches = endless(g_loader)  # empty samples included: each is a release the accounting counts
        self.dp = {"noise_multiplier": float(noise), "sample_rate": q, "max_grad_norm": opts.dp_max_grad_norm,
                   "delta": opts.dp_delta, "target_epsilon": opts.dp_epsilon}
        self._limit = self._steps_within_budget()
        if self._limit < 1:
            raise CmrError(f"--dp-epsilon {opts.dp_epsilon} is spent before the first step at noise multiplier {noise:.3g}; "
                           "raise --dp-epsilon or --dp-noise, or lower --batch.")
        self.log(f"Differentially private: noise multiplier {noise:.3f}, sample rate {q:.4f}, clipping {opts.dp_max_grad_norm}; "
                 f"the budget epsilon={opts.dp_epsilon} (delta={opts.dp_delta:g}) allows {self._limit} steps.")

    def _epsilon_after(self, steps: int) -> float:
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = [(self.dp["noise_multiplier"], self.dp["sample_rate"], 2 * steps)] if steps else []
        return float(acc.get_epsilon(self.dp["delta"])) if steps else 0.0

    def _steps_within_budget(self) -> int:
        """The most steps (each two releases) whose epsilon stays within the target, at most --steps."""
        target = self.dp["target_epsilon"]
        if self._epsilon_after(self.opts.steps) <= target:
            return self.opts.steps
        lo, hi = 0, self.opts.steps  # eps(lo) <= target < eps(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._epsilon_after(mid) <= target else (lo, mid)
        return lo

    def step_limit(self) -> int:
        return self._limit if self.dp else self.opts.steps

    def limit_reason(self) -> str:
        return (f"Stopping at step {self.step}: the privacy budget epsilon={self.opts.dp_epsilon} (delta={self.opts.dp_delta:g}) is spent "
                f"(one more step would pass it).")

    def epsilon_spent(self) -> float | None:
        return float(self.engine.accountant.get_epsilon(self.opts.dp_delta)) if self.dp else None

    def networks(self) -> dict:
        return {"generator": self.G, "ema": self.G_ema, "discriminator": self.D, **({"critic": self.C} if self.C is not None else {}),
                **({"feature_critic": self.Fc} if self.Fc is not None else {})}

    def optimisers(self) -> dict:
        return {"g": self.opt_g, "d": self.opt_d, **({"c": self.opt_c} if self.C is not None else {}),
                **({"f": self.opt_f} if self.Fc is not None else {})}

    def describe_start(self) -> str:
        return f"Training SPADE ({self.opts.preset}, {count_parameters(self.G) / 1e6:.2f} M parameters)"

    def architecture(self) -> dict:
        scene = self.cfg.arch == "unet"
        return {
            "class": f"cmrstudio.models.spade.{type(self.G).__name__}",
            "preset": self.opts.preset,
            "options": self.cfg.to_dict(),
            "parameters": count_parameters(self.G),
            "discriminator_parameters": count_parameters(self.D),
            **({"critic": "the machine reader's CNN (cmrstudio.study.machine.RealSynthCNN: conv, GroupNorm, SiLU, global mean "
                          "pooling, one logit; no spectral norm) on the image alone, logistic loss; the generator's loss is "
                          "the non-saturating one" + ("; it sees the image through a fixed [1 2 1] x [1 2 1] / 16 blur, so its "
                                                      "gradient has no power at period 2 (--critic-blur)" if self.opts.critic_blur else ""),
                "critic_parameters": count_parameters(self.C)} if self.C is not None else {}),
            **({"feature_critic": f"a linear logit on the Gram matrices of the first {len(self.Fc.enc)} encoder levels of the segmenter "
                                  f"{self.feature_critic_from['name']} (sha256 {self.feature_critic_from['sha256']}), held fixed "
                                  "(projected-GAN style; cmrstudio.models.spade.FeatureCritic), logistic loss; the generator's loss "
                                  "is the non-saturating one",
                "feature_critic_parameters": count_parameters(self.Fc.head)} if self.Fc is not None else {}),
            "normalisation": ("PixelNorm + SPADE (heart, tissue classes, context; z and vendor bias), per-pixel noise, "
                              f"{self.cfg.upsample} upsampling"
                              if scene else "instance norm + SPADE (mask one-hot, vendor bias)"),
            **({"composite": "in-patient windows: the context's real pixels replace the output outside the repainted region "
                             "before the discriminator sees it"} if scene else {}),
            "losses": {"hinge_gan": 1.0, "feature_matching": self.weights.fm, "lowpass_l1_4x": self.weights.lowpass,
                       **({"grid_period2": self.weights.grid} if self.weights.grid else {}),
                       **({"mode_seeking": self.opts.mode_seeking} if self.opts.mode_seeking else {}),
                       **({"critic": self.opts.critic} if self.C is not None else {}),
                       **({"feature_critic": self.opts.feature_critic} if self.Fc is not None else {}),
                       **({"hinge_average": "over the repainted region in in-patient windows (each discriminator output weighed "
                                            "by the repainted share of its receptive field; per window, then over the batch), "
                                            "over the whole window otherwise"}
                          if self.opts.adv_region else {}),
                       "note": "no VGG perceptual loss (no ImageNet weights offline); low-pass L1 instead"},
            "ema": self.opts.ema,
        }

    def training_extra(self) -> dict:
        extra = {"lr": {"g": self.opts.lr_g, "d": self.opts.lr_d, **({"critic": self.opts.lr_critic} if self.C is not None else {}),
                        **({"feature_critic": self.opts.lr_critic} if self.Fc is not None else {})},
                 "precision": "bf16 autocast (networks), float32 losses" if self.bf16 else "fp32"}
        if self.dp:
            extra["differential_privacy"] = {
                "epsilon": round(self.epsilon_spent(), 4), **self.dp, "steps_taken": self.step, "steps_allowed": self._limit,
                "stopped_by": ("privacy budget" if self.step >= self._limit and self._limit < self.opts.steps else
                               "steps" if self.step >= self._limit else "time or interruption, before the budget was spent"),
                "mechanism": "DP-SGD (Opacus) on generator and discriminator: per-sample clipping and Gaussian noise, two releases "
                             "per step on independent Poisson samples, RDP accountant",
                "unit": "one training slice (the images of one patient are several slices: patient-level epsilon is larger)",
                "library": "opacus " + __import__("opacus").__version__,
                "secure_rng": False,  # torch's generator draws the noise (Opacus secure_mode off): fine for research, not a formal release
                "covers": ("the fine-tuning on the data under training.data only; the pre-training (training.pretraining) saw public "
                           "data only and is not part of the accounting" if self.pretraining else "the whole training (no pre-training)"),
                "data_seen_privately": [d["dataset"] for d in data_summary(self.ds, self.cases)],
            }
        if self.opts.d_warmup:
            extra["discriminator_warmup_steps"] = self.opts.d_warmup  # the generator trained in the steps after these
        if self.opts.g_warmup:
            extra["generator_lr_warmup_steps"] = self.opts.g_warmup  # linear from lr_g / g_warmup to lr_g
        if self.pretraining:
            extra["pretraining"] = self.pretraining
        return extra

    def render_fixed(self, f: dict) -> list[np.ndarray]:
        v = f["vendor"].to(self.device)
        if "cond" in f:  # scene model: fully synthetic with two seeds, then in this patient
            rows = []
            runs = [(f["cond"], s) for s in f["seeds"]] + [(f["cond_context"], f["seeds"][0])]
            for c, seed in runs:
                c = c.to(self.device)
                g = torch.Generator().manual_seed(seed)
                z = torch.randn(1, self.cfg.z_dim, generator=g).expand(len(c), -1).to(self.device)
                noise = torch.randn(1, 1, *c.shape[-2:], generator=g).expand(len(c), -1, -1, -1).to(self.device)
                out = composite(self.G_ema(c, v, z, noise), c, c[:, -2:-1])
                rows.append(out.cpu()[:, 0].numpy())
            return rows
        oh = onehot(f["mask"]).to(self.device)
        rows = []
        for seed in f["seeds"]:
            z = torch.randn(1, self.cfg.z_dim, generator=torch.Generator().manual_seed(seed)).expand(len(oh), -1)
            rows.append(self.G_ema(oh, v, z.to(self.device)).cpu()[:, 0].numpy())
        return rows

    def train_step(self, batch: dict) -> dict:
        if self.dp:
            return self._private_step(batch)
        if "cond" in batch:
            return self._scene_step(batch)
        real = batch["image"].to(self.device)
        oh = onehot(batch["mask"]).to(self.device)
        vendor = self.drop_vendor(batch["vendor"])

        z = self._latents(len(real))
        with torch.set_grad_enabled(not self.warming_up):  # in the warm-up the generator's output is only the D's input
            fake = self.G(oh, vendor, z[0])
        d_real = self.D(real, oh, vendor)
        d_fake = self.D(fake.detach(), oh, vendor)
        loss_d = d_hinge(d_real, d_fake)
        d_log = self._update_d(loss_d, real, fake)
        if self.warming_up:
            return d_log

        g = self._g_losses(self.D, fake, real, oh, vendor, self.G(oh, vendor, z[1]) if self.opts.mode_seeking else None, z)
        self.opt_g.zero_grad(set_to_none=True)
        g["g"].backward()
        self._set_lr_g()
        self.opt_g.step()
        self.update_ema(self.G_ema, self.G)
        return {**d_log, **{k: float(v.detach()) for k, v in g.items()}}

    def _scene_step(self, batch: dict) -> dict:
        """A scene model's step: the generator reads heart, tissue classes and context; in in-patient windows
        the context's real pixels replace its output outside the repainted region (as at render time)."""
        real = batch["image"].to(self.device)
        cond = batch["cond"].to(self.device)
        vendor = self.drop_vendor(batch["vendor"])
        z = self._latents(len(real))
        with self._autocast():
            with torch.set_grad_enabled(not self.warming_up):  # in the warm-up the generator's output is only the D's input
                fake = composite(self.G(cond, vendor, z[0]), cond, real)
            d_real = self.D(real, cond, vendor)
            d_fake = self.D(fake.detach(), cond, vendor)
        weights = region_weights(self.D, 1 - cond[:, -1:]) if self.opts.adv_region else None
        loss_d = d_hinge(_f32(d_real), _f32(d_fake), weights)
        d_log = self._update_d(loss_d, real, fake)
        if self.warming_up:
            return d_log

        with self._autocast():
            other = composite(self.G(cond, vendor, z[1]), cond, real) if self.opts.mode_seeking else None
        g = self._g_losses(self.D, fake, real, cond, vendor, other, z, weights)
        self.opt_g.zero_grad(set_to_none=True)
        g["g"].backward()
        self._set_lr_g()
        self.opt_g.step()
        self.update_ema(self.G_ema, self.G)
        return {**d_log, **{k: float(v.detach()) for k, v in g.items()}}

    def _update_d(self, loss_d: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One discriminator update (and the critic's, with --critic, on the same real and rendered images); returns their
        losses for the step's log (within --d-warmup the step's whole log: the generator waits)."""
        critic = {}
        total = loss_d
        if self.C is not None:
            with self._autocast():
                c_real, c_fake = self.C(real).float(), self.C(fake.detach()).float()
            # logistic loss; the logit says 'synthetic' (the machine reader's convention)
            loss_c = F.softplus(c_real).mean() + F.softplus(-c_fake).mean()
            critic = {"critic": loss_c.detach(), "critic_acc": ((c_real < 0).float().mean() + (c_fake > 0).float().mean()) / 2}
            total = loss_d + loss_c
            self.opt_c.zero_grad(set_to_none=True)
        if self.Fc is not None:
            f_real, f_fake = self.Fc(real.float()), self.Fc(fake.detach().float())
            loss_f = F.softplus(f_real).mean() + F.softplus(-f_fake).mean()
            critic.update({"fcritic": loss_f.detach(), "fcritic_acc": ((f_real < 0).float().mean() + (f_fake > 0).float().mean()) / 2})
            total = total + loss_f
            self.opt_f.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        total.backward()
        self.opt_d.step()
        if self.C is not None:
            self.opt_c.step()
        if self.Fc is not None:
            self.opt_f.step()
        return {"d": float(loss_d.detach()), **{k: float(v) for k, v in critic.items()}}

    def lr_g_now(self) -> float:
        """The generator's learning rate at this step: with --g-warmup, rising linearly over its first g_warmup steps after
        --d-warmup (a generator taken on by --init gets fresh Adam moments, whose first steps are the largest), then lr_g."""
        o = self.opts
        return o.lr_g * min(1.0, (self.step - o.d_warmup + 1) / o.g_warmup) if o.g_warmup else o.lr_g

    def _set_lr_g(self) -> None:
        for group in self.opt_g.param_groups:
            group["lr"] = self.lr_g_now()

    @property
    def warming_up(self) -> bool:
        """Within --d-warmup: the discriminator learns, the generator (and its EMA) waits."""
        return self.step < self.opts.d_warmup

    def _latents(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """With mode seeking, two latents per mask (one for each render); without, none (the generator draws its own)."""
        if not self.opts.mode_seeking:
            return None, None
        return tuple(torch.randn(b, self.cfg.z_dim, generator=self.rng).to(self.device) for _ in range(2))

    def _g_losses(self, D, fake: torch.Tensor, real: torch.Tensor, oh: torch.Tensor, vendor: torch.Tensor,
                  other: torch.Tensor | None = None, z: tuple | None = None, weights: list[torch.Tensor] | None = None) -> dict:
        """The generator's losses: hinge, feature matching against the real image's features, low-pass L1; with
        ``other`` (the same masks rendered from the second latent of ``z``) the mode-seeking loss (Mao et al., MSGAN,
        CVPR 2019): the inverse of how far apart the two renders are per unit of latent distance, so that a seed
        changes the image instead of being ignored. ``weights``: the hinge's patch weights (:func:`region_weights`)."""
        with self._autocast():
            d_fake = _f32(D(fake, oh, vendor))
            with torch.no_grad():
                d_real = _f32(D(real, oh, vendor))
        adv, fm, lp = g_hinge(d_fake, weights), feature_matching(d_real, d_fake), lowpass_l1(fake.float(), real)
        out = {"g_adv": adv, "fm": fm, "lowpass": lp, "g": adv + self.weights.fm * fm + self.weights.lowpass * lp}
        if self.grid_penalty is not None:
            out["g"] = out["g"] + self.weights.grid * self.grid_penalty(fake)
            out["grid"] = torch.tensor(self.grid_penalty.power)
        if self.C is not None:
            with self._autocast():
                out["g_critic"] = F.softplus(self.C(fake).float()).mean()  # non-saturating: -log P(real) by the critic
            out["g"] = out["g"] + self.opts.critic * out["g_critic"]
        if self.Fc is not None:
            out["g_fcritic"] = F.softplus(self.Fc(fake.float())).mean()
            out["g"] = out["g"] + self.opts.feature_critic * out["g_fcritic"]
        if other is not None:
            apart = (fake.float() - other.float()).abs().mean() / (z[0] - z[1]).abs().mean()
            out["ms"] = 1.0 / (apart + 1e-5)
            out["g"] = out["g"] + self.opts.mode_seeking * out["ms"]
        return out

    def _private_step(self, batch: dict) -> dict:
        """One DP step: the discriminator on one Poisson sample, then the generator on another. Losses are
        means over the sample, so every image's part of a gradient is its own (no batch statistics). An empty
        sample still releases its update, noise alone, as the accounting assumes; its losses are not logged
        (nothing to average), and ``empty`` counts such releases."""
        out = {"empty": 0.0}
        self.opt_d.zero_grad(set_to_none=True)
        if len(batch["image"]):
            real = batch["image"].to(self.device)
            oh = onehot(batch["mask"]).to(self.device)
            vendor = self.drop_vendor(batch["vendor"])
            with torch.no_grad():
                fake = self.G(oh, vendor)
            self.Gp.disable_hooks()
            loss_d = d_hinge(self.Dp(real, oh, vendor), self.Dp(fake, oh, vendor))  # both terms of sample i sum into its gradient
            loss_d.backward()
            self.Gp.enable_hooks()
            out["d"] = loss_d
        else:
            _no_samples(self.Dp)
            out["empty"] += 1
        self.opt_d.step()

        b = next(self._g_batches)
        self.opt_g.zero_grad(set_to_none=True)
        if len(b["image"]):
            real = b["image"].to(self.device)
            oh = onehot(b["mask"]).to(self.device)
            vendor = self.drop_vendor(b["vendor"])
            self.Dp.disable_hooks()
            g = self._g_losses(self.Dp, self.Gp(oh, vendor), real, oh, vendor)
            g["g"].backward()
            self.Dp.enable_hooks()
            out.update(g)
        else:
            _no_samples(self.Gp)
            out["empty"] += 1
        self._set_lr_g()
        self.opt_g.step()
        self.opt_d.zero_grad(set_to_none=True)  # the discriminator's gradients from the generator's loss are not used
        self.update_ema(self.G_ema, self.G)
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}


def _no_samples(module) -> None:
    """An empty Poisson sample: zero-length per-sample gradients, so that the optimiser's step releases noise alone."""
    for p in module.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)


def _f32(feats: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [[f.float() for f in fs] for fs in feats]


def composite(out: torch.Tensor, cond: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Where the conditioning marks real context (its last channel), the context's pixels; elsewhere the output."""
    valid = cond[:, -1:]
    return valid * context + (1 - valid) * out


def _take_from_run(net: torch.nn.Module, path: Path, what: str) -> str:
    """Load a network a starting model's run kept beside its card into ``net`` where it fits; says where ``net`` came from."""
    from cmrstudio.models.checkpoint import load_state

    if not path.exists():
        return f"fresh ({what} was not found beside its card)"
    try:
        net.load_state_dict(load_state(path))
    except RuntimeError:
        return f"fresh ({what} does not fit)"
    return f"{what} ({path.parent.name}/{path.name})"
