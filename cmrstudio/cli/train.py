"""``cmrstudio train``: spade, diffusion, flow, segmenter, layout priors and banks, soups."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cmrstudio.cli.common import check_name
from cmrstudio.models.spectrum import MAX_CYCLES, STRENGTH

CLASS_THRESHOLDS_HELP = ("Scene and layout-fine presets: where the tissue bands' multi-Otsu thresholds come from: 'scan' (the whole "
                         "scan) or 'frame' (the 160 mm heart frame, applied to the whole scene, as layout banks do).")
HIDE_HEART_CLASSES_HELP = ("Scene presets: leave the tissue classes out on the heart and within this many mm of it in fully synthetic "
                           "training windows (and in the model's renders, as its card says), so that the model draws the heart's inside "
                           "and rim itself (0: off; 2-5 usual).")

train_app = typer.Typer(help="Train models: spade, diffusion, flow, segmenter.", no_args_is_help=True)


@train_app.command("spade")
def train_spade(
    data: list[str] = typer.Option([], "--data", help="Training folder or file (any format cmrstudio reads); repeat for several."),
    out: Path = typer.Option(Path("runs/spade"), "--out", help="Run folder: model, card, samples, training state."),
    name: str = typer.Option("spade", "--name", help="Model name (file names and registry)."),
    phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases to the data (alone, for a smoke run)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
    preset: str = typer.Option("lite", "--preset", help="Architecture: scene (whole field of view, live), lite (heart crop), lite-style (heart crop, z styles every block), base (GPU), scene-tiny (tests)."),
    size: int = typer.Option(128, "--size", help="Frame size in pixels (128 live, 256 HQ)."),
    steps: int = typer.Option(2000, "--steps", help="Total training iterations."),
    batch: int = typer.Option(8, "--batch", help="Batch size."),
    lr_g: float = typer.Option(1e-4, "--lr-g"),
    lr_d: float = typer.Option(4e-4, "--lr-d"),
    grid_loss: float = typer.Option(0.0, "--grid-loss", help="Weight of a penalty on period-2 grid patterns in the generator's gradient energy (0: off; 1000 removed spade-cmr's grid)."),
    mode_seeking: float = typer.Option(0.0, "--mode-seeking", help="Weight of the mode-seeking loss: two seeds of one mask must give two images (0: off; not with --dp-epsilon)."),
    fm: float = typer.Option(10.0, "--fm", help="Weight of the discriminator feature-matching loss (ties each render's features to its real slice's)."),
    lowpass: float = typer.Option(10.0, "--lowpass", help="Weight of the L1 loss between the 4x-downsampled render and real slice (ties each render's coarse image to its real slice's; lower it for more diversity between seeds)."),
    seed: int = typer.Option(0, "--seed"),
    sample_every: int = typer.Option(250, "--sample-every", help="Write a sample grid PNG every N steps."),
    save_every: int = typer.Option(500, "--save-every", help="Save model and training state every N steps."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (picked automatically when omitted)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    workers: int = typer.Option(0, "--workers", help="Data-loading processes beside training (0: none; on a GPU, several keep it fed)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last saved step."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop (and save) after this many minutes."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Also keep the model at every save (OUT/checkpoints), for `cmrstudio evaluate checkpoints`."),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="Train with differential privacy (DP-SGD, Opacus) and stop when this epsilon is spent."),
    dp_delta: float = typer.Option(1e-5, "--dp-delta", help="Delta of the (epsilon, delta) guarantee."),
    dp_max_grad_norm: float = typer.Option(1.0, "--dp-max-grad-norm", help="Per-sample gradient clipping bound."),
    dp_noise: Optional[float] = typer.Option(None, "--dp-noise", help="Noise multiplier (default: calibrated to spend --dp-epsilon in --steps)."),
    dp_architecture: bool = typer.Option(False, "--dp-architecture", help="Use the DP-compatible discriminator (GroupNorm, no spectral norm) without DP: public pre-training for a later --init ... --dp-epsilon run."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this model's weights (a card path or name; its discriminator and critic too when its run folder or its NAME.adversaries/ folder beside the card kept them): public pre-training, then fine-tuning."),
    bf16: Optional[bool] = typer.Option(False, "--bf16/--fp32", help="Scene presets: bfloat16 autocast for the networks (losses stay float32)."),
    layout_prior: Optional[str] = typer.Option(None, "--layout-prior", help="Scene presets: the tissue-class prior (name or card; default: the installed layout-cmr, onto which fully synthetic training conditions are projected). A fine prior (layout-fine): trained on each slice's own tissue classes on its 2.5 mm cells, rendered with it. layout-fine itself: the coarse prior it refines."),
    in_patient: Optional[float] = typer.Option(None, "--in-patient", help="Scene presets: the fraction of training windows in this patient (real context outside a margin; default 0.5); the rest are fully synthetic."),
    d_warmup: int = typer.Option(0, "--d-warmup", help="Steps at the start in which only the discriminator learns: for --init when the model's run folder kept no discriminator."),
    g_warmup: int = typer.Option(0, "--g-warmup", help="Generator steps after --d-warmup over which its learning rate rises linearly to --lr-g (0: off). With --init the generator's Adam moments start fresh, and its first steps would be the largest; a few hundred let them settle."),
    d_groupnorm: bool = typer.Option(False, "--d-groupnorm", help="GroupNorm after each inner discriminator layer, beside spectral norm (akin to SPADE's spectral-instance norm): normalised features for a discriminator that spectral norm alone keeps small."),
    hide_heart_classes: float = typer.Option(0.0, "--hide-heart-classes", help=HIDE_HEART_CLASSES_HELP),
    class_thresholds: str = typer.Option("scan", "--class-thresholds", help=CLASS_THRESHOLDS_HELP),
    adv_region: bool = typer.Option(False, "--adv-region", help="Scene presets: average the hinge losses of in-patient windows over the repainted region (outside it real and composite agree), not over the whole window."),
    critic: float = typer.Option(0.0, "--critic", help="Weight of a second, image-level discriminator (the machine reader's CNN: global pooling, no spectral norm, logistic loss) beside the PatchGANs: it learns the renders' global tells (texture, noise) in hundreds of steps where a spectral-norm PatchGAN needs thousands (0: off; 0.1-1 usual; with --d-warmup it warms up too)."),
    lr_critic: float = typer.Option(1e-3, "--lr-critic", help="The critic's learning rate (Adam); the feature critic's too."),
    feature_critic: float = typer.Option(0.0, "--feature-critic", help="Weight of a critic on fixed features: a linear logit on the Gram matrices (texture statistics) of the first encoder levels of the shipped segmenter seg-cmr, which stays frozen; only the logit learns, so it tells renders from scans within tens of steps (projected-GAN style; 0: off)."),
    critic_blur: bool = typer.Option(False, "--critic-blur", help="The critic sees each image through a fixed [1 2 1] blur, so it can neither reward nor punish a period-2 grid; its weights are those of a critic without it, so --init hands one on either way (tried once: the grid came back as often as without it)."),
    install: bool = typer.Option(False, "--install", help="Copy the finished model into the user models folder (with its discriminator and critic in NAME.adversaries/, for a later --init)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train a SPADE generator (resumable; progress bar with ETA; sample grids in OUT/samples); --dp-epsilon trains it privately."""
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.train.spade import SpadeTrainer, TrainOptions

    opts = TrainOptions(
        data=list(data), out=str(out), name=name, phantom=phantom, exclude=list(exclude), preset=preset, size=size,
        steps=steps, batch=batch, lr_g=lr_g, lr_d=lr_d, grid=grid_loss, mode_seeking=mode_seeking, fm=fm, lowpass=lowpass, seed=seed, sample_every=sample_every, save_every=save_every,
        device=device, threads=threads, workers=workers, resume=resume, max_minutes=max_minutes, keep_checkpoints=keep_checkpoints,
        dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_max_grad_norm=dp_max_grad_norm, dp_noise=dp_noise, bf16=bf16, layout_prior=layout_prior,
        dp_architecture=dp_architecture, init=init, in_patient=in_patient, d_warmup=d_warmup, g_warmup=g_warmup, d_groupnorm=d_groupnorm,
        adv_region=adv_region, hide_heart_classes=hide_heart_classes, class_thresholds=class_thresholds, critic=critic,
        lr_critic=lr_critic, critic_blur=critic_blur, feature_critic=feature_critic,
    )
    check_name(name)
    tr = SpadeTrainer(opts).run(progress=not quiet)
    if tr.dp:
        typer.echo(f"Differential privacy: epsilon {tr.epsilon_spent():.3f} spent of {dp_epsilon} (delta {dp_delta:g}) in {tr.step} steps.")
    if tr.pretraining:
        typer.echo(f"Pre-trained: {tr.pretraining['name']}; {tr.pretraining['privacy']}")
    _report_trained(read_card(Path(out) / f"{name}.json"), tr.step, install)


def _train_generator(objective: str, **kw) -> None:
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.train.diffusion import DiffusionOptions, DiffusionTrainer

    install, quiet = kw.pop("install"), kw.pop("quiet")
    kw["grid"] = kw.pop("grid_loss")
    check_name(kw["name"])
    kw["out"], kw["data"], kw["exclude"] = str(kw["out"]), list(kw["data"]), list(kw["exclude"])
    tr = DiffusionTrainer(DiffusionOptions(objective=objective, **kw)).run(progress=not quiet)
    _report_trained(read_card(Path(kw["out"]) / f"{kw['name']}.json"), tr.step, install)


def _report_trained(info, step: int, install: bool) -> None:
    typer.echo(f"Model {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}, step {step}.")
    if install:
        from cmrstudio.models.registry import install_model

        typer.echo(f"Installed into {install_model(info).card_path.parent}.")


def _hq_train_command(objective: str, default_steps: int):
    def command(
        data: list[str] = typer.Option([], "--data", help="Training folder or file (any format cmrstudio reads); repeat for several."),
        out: Path = typer.Option(Path(f"runs/{objective}"), "--out", help="Run folder: model, card, samples, training state."),
        name: str = typer.Option(objective, "--name", help="Model name (file names and registry)."),
        phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases to the data (alone, for a smoke run)."),
        exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
        preset: str = typer.Option("lite", "--preset", help="Architecture: scene (whole field of view), lite (heart crop), base (GPU), layout-fine (the fine tissue-class prior, flow only; --size in 2.5 mm cells, 96 usual), tiny/scene-tiny/layout-fine-tiny (tests)."),
        size: int = typer.Option(128, "--size", help="Frame size in pixels (128 live frame, 256 HQ frame)."),
        steps: int = typer.Option(20000, "--steps", help="Total training iterations."),
        batch: int = typer.Option(8, "--batch", help="Batch size."),
        lr: float = typer.Option(2e-4, "--lr"),
        warmup: int = typer.Option(200, "--warmup", help="Steps of learning-rate warm-up."),
        cond_drop: Optional[float] = typer.Option(None, "--cond-drop", help="Fraction of samples trained without the mask (for guidance); default 0.1, or 0 with --reflow."),
        guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale for the sample grids and the card's default (1.5; not with --reflow)."),
        sample_steps: int = typer.Option(default_steps, "--sample-steps", help="Sampling steps for the grids and the card's default."),
        seed: int = typer.Option(0, "--seed"),
        sample_every: int = typer.Option(500, "--sample-every", help="Write a sample grid PNG every N steps."),
        save_every: int = typer.Option(500, "--save-every", help="Save model and training state every N steps."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (picked automatically when omitted)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
        workers: int = typer.Option(0, "--workers", help="Data-loading processes beside training (0: none; on a GPU, several keep it fed)."),
        bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32", help="Mixed precision (default: where bfloat16 is native)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last saved step."),
        max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop (and save) after this many minutes."),
        keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Also keep the model at every save (OUT/checkpoints), for `cmrstudio evaluate checkpoints`."),
        layout_prior: Optional[str] = typer.Option(None, "--layout-prior", help="Scene presets: the tissue-class prior (name or card; default: the installed layout-cmr, onto which fully synthetic training conditions are projected). A fine prior (layout-fine): trained on each slice's own tissue classes on its 2.5 mm cells, rendered with it. layout-fine itself: the coarse prior it refines."),
        grid_loss: float = typer.Option(0.0, "--grid-loss", help="Weight of a penalty on period-2 grid patterns in the predicted clean image's gradient energy (0: off)."),
        hide_heart_classes: float = typer.Option(0.0, "--hide-heart-classes", help=HIDE_HEART_CLASSES_HELP),
        class_thresholds: str = typer.Option("scan", "--class-thresholds", help=CLASS_THRESHOLDS_HELP),
        init: Optional[str] = typer.Option(None, "--init", help=f"Start from this {objective} model's weights (a card path or name; same --preset and --size): fine-tuning."),
        reflow: int = typer.Option(0, "--reflow", help="Flow only: distil the --init model (or --teacher when given): learn to land in --sample-steps (1 or 2) where its renders in this many Euler steps land (reflow; 0: off)."),
        teacher: Optional[str] = typer.Option(None, "--teacher", help="With --reflow: the teacher, when it is not the --init model (a distilled student learning on from its teacher)."),
        adversarial: float = typer.Option(0.0, "--adversarial", help="Weight of a discriminator's hinge loss on the predicted clean images, against real slices (0: off; 0.05-0.5 typical)."),
        d_warmup: int = typer.Option(200, "--d-warmup", help="With --adversarial: batches the discriminator learns alone on (against the network's renders) before the first step."),
        lr_d: float = typer.Option(2e-4, "--lr-d", help="With --adversarial: the discriminator's learning rate."),
        install: bool = typer.Option(False, "--install", help="Copy the finished model into the user models folder."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ):
        options = {k: v for k, v in locals().items() if k != "objective"}  # locals() also holds the closure's objective
        _train_generator(objective, **options)

    return command


train_app.command("diffusion", help="Train a mask-conditioned diffusion model (v-prediction, DDIM sampling; resumable, EMA, sample grids).")(
    _hq_train_command("diffusion", 25))
train_app.command("flow", help="Train a mask-conditioned rectified-flow model (few-step ODE sampling; resumable, EMA, sample grids).")(
    _hq_train_command("flow", 4))

@train_app.command("layout")
def train_layout_cmd(
    data: list[str] = typer.Option([], "--data", help="Training folder or file; repeat for several."),
    out: Path = typer.Option(Path("runs/layout"), "--out", help="Folder for the model and its card."),
    name: str = typer.Option("layout", "--name"),
    phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases."),
    exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
    components: int = typer.Option(32, "--components", help="Principal components of the prior."),
    seed: int = typer.Option(0, "--seed"),
):
    """Fit the tissue-class prior (probabilistic PCA of body layouts around the heart) that scene models are trained with
    and fully synthetic renders sample from."""
    from cmrstudio.train.layout import LayoutOptions, fit_layout

    check_name(name)
    info = fit_layout(LayoutOptions(data=list(data), out=str(out), name=name, phantom=phantom, exclude=list(exclude),
                                    components=components, seed=seed), log=lambda m: typer.echo(m, err=True))
    tr = info.card["training"]
    typer.echo(f"Model {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}; "
               f"{tr['slices']} slices, variance explained {tr['variance_explained']:.1%}.")


@train_app.command("layout-bank")
def train_layout_bank_cmd(
    data: list[str] = typer.Option([], "--data", help="Scans with heart labels; repeat for several."),
    out: Path = typer.Option(Path("runs/layout-bank"), "--out", help="Folder for the bank and its card."),
    name: str = typer.Option("layout-bank", "--name"),
    exclude: list[str] = typer.Option([], "--exclude", help="Leave out cases whose id starts with this; repeatable."),
    fallback: str = typer.Option("layout-cmr-fine", "--fallback", help="The fine tissue-class prior beyond a picked scan's edge (its cells are the bank's)."),
    k: int = typer.Option(20, "--k", help="A seed picks among this many scans whose heart is nearest the painted one (fewer: renders of one mask vary less)."),
):
    """Build a layout bank: real scans' own tissue classes, which fully synthetic renders take their body layout from
    (name it with `render --layout-prior`, or in a scene model's card)."""
    from cmrstudio.train.layout import BankOptions, build_bank

    check_name(name)
    info = build_bank(BankOptions(data=list(data), out=str(out), name=name, exclude=list(exclude), fallback=fallback, k=k),
                      log=lambda m: typer.echo(m, err=True))
    typer.echo(f"Layout bank {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}; "
               f"{info.card['training']['slices']} slices.")


@train_app.command("soup")
def train_soup_cmd(
    members: list[str] = typer.Argument(..., help="Two checkpoints or more (cards, weights files or installed names) trained on from one model."),
    out: Path = typer.Option(Path("runs/soup"), "--out", help="Folder for the soup and its card."),
    name: str = typer.Option("soup", "--name"),
):
    """Average the weights of checkpoints fine-tuned from one model (a model soup): one model, often better than each
    checkpoint, and steadier. Measure it like any model (`cmrstudio evaluate all --model OUT/NAME.json`)."""
    from cmrstudio.train.soup import make_soup

    check_name(name)
    info = make_soup(list(members), out, name)
    typer.echo(f"Model {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}; "
               f"the mean of {len(info.card['training']['soup']['members'])} checkpoints.")


@train_app.command("spectrum-gain")
def train_spectrum_gain_cmd(
    model: str = typer.Argument(..., help="An installed flow or diffusion scene model (name or card) whose card gets the gain."),
    data: list[str] = typer.Option([], "--data", help="Real scans with labels; repeatable. Only the patients its card does not hold out are used."),
    slices: int = typer.Option(120, "--slices", help="Heart slices, spread evenly over the training patients."),
    strength: float = typer.Option(STRENGTH, "--strength", help="How far towards the real power: 1 matches it, 0.5 goes half-way in log power."),
    max_cycles: float = typer.Option(MAX_CYCLES, "--max-cycles", help="No gain above this frequency (cycles per pixel; 0.5 = Nyquist; above 0.3 a faint period-2 residue comes back)."),
    seed: int = typer.Option(20000, "--seed", help="Slice j is rendered with seed SEED + j."),
    threads: Optional[int] = typer.Option(None, "--threads"),
):
    """Fit the radial spectrum gain of a step-wise scene model on its training patients (real slices against its fully
    synthetic renders of their masks) and write it into its card (sampling.spectrum_gain); renders take it from there.
    Measure the model again afterwards (`cmrstudio evaluate all`)."""
    import datetime

    import torch

    from cmrstudio.errors import CmrError
    from cmrstudio.models.checkpoint import update_card
    from cmrstudio.models.registry import get_model
    from cmrstudio.models.spectrum import fit_model_gain

    if not data:
        raise CmrError("Give --data: real scans with labels, whose training patients the spectrum gain is fitted on.")
    if threads:
        torch.set_num_threads(int(threads))
    info = get_model(model, kind=("flow", "diffusion"))
    fit = fit_model_gain(model, list(data), slices, strength, max_cycles, seed, say=typer.echo)
    fit["command"] = (f"cmrstudio train spectrum-gain {info.name} " + " ".join(f"--data {d}" for d in data)
                      + f" --slices {slices} --strength {strength:g} --max-cycles {max_cycles:g} --seed {seed}")
    fit["date"] = datetime.date.today().isoformat()
    update_card(info, sampling={**(info.card.get("sampling") or {}), "spectrum_gain": fit})
    typer.echo(f"{info.card_path}: spectrum gain fitted on {fit['slices']} slices (strength {strength:g}; gain up to "
               f"{max(fit['gain']):.2f} below {max_cycles:g} cycles/px). Measure it again: cmrstudio evaluate all --model {info.name} ...")


@train_app.command("segmenter")
def train_segmenter_cmd(
    data: list[str] = typer.Option([], "--data", help="Training folder or file; repeat for several."),
    out: Path = typer.Option(Path("runs/segmenter"), "--out", help="Run folder for the model and its card."),
    name: str = typer.Option("segmenter", "--name"),
    phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases."),
    exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
    steps: int = typer.Option(800, "--steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train the LV/MYO/RV U-Net segmenter used to measure mask faithfulness."""
    from cmrstudio.train.segmenter import SegOptions, train_segmenter

    check_name(name)
    info = train_segmenter(SegOptions(data=list(data), out=str(out), name=name, phantom=phantom, exclude=list(exclude), steps=steps,
                                      batch=batch, lr=lr, seed=seed, device=device, threads=threads), progress=not quiet)
    typer.echo(f"Model {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}.")

