"""``cmrstudio evaluate``: fidelity, faithfulness, diversity, all, realism, sheet, report, segmenter, utility, privacy,
checkpoints.

The evaluations and what is recorded in the model cards live in :mod:`cmrstudio.evaluate.run`; these commands parse
their arguments and print the results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cmrstudio.cli.common import (EvalCaseOpt, EvalDataOpt, EvalGuidanceOpt, EvalStepsOpt, GeneratorOpt, LayoutPriorOpt, _eval_inputs, _held_out,
                                  check_layout_choice, command_line)
from cmrstudio.errors import CmrError

evaluate_app = typer.Typer(help="Measure models: fidelity, faithfulness, diversity, privacy, utility, the segmenter; and report.", no_args_is_help=True)


@evaluate_app.command("faithfulness")
def evaluate_faithfulness_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    model: Optional[str] = GeneratorOpt,
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter (default: the shipped one)."),
    seeds: int = typer.Option(2, "--seeds", help="Renders per mask."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    layout_prior: Optional[str] = LayoutPriorOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Dice of a real-trained segmenter on synthetic images of held-out masks, beside its Dice on the real images."""
    from cmrstudio.evaluate.run import run_faithfulness

    cases, hq = _eval_inputs(data, case, seeds, steps, guidance, model, layout_prior, write_card)
    res = run_faithfulness(cases, model=model, segmenter=segmenter, seeds=seeds, device=device, write_card=write_card,
                           command=command_line(), **hq)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    _print_faithfulness(res)


def _print_faithfulness(res) -> None:
    typer.echo(f"{res.n_cases} cases, {res.n_slices} slices, {res.seeds} seeds per mask; Dice of the segmenter:")
    typer.echo(f"  {'':<22}" + "".join(f"{k:>8}" for k in res.real))
    typer.echo("  on the real images    " + "".join(f"{v:>8.3f}" for v in res.real.values()))
    typer.echo("  on synthetic images   " + "".join(f"{v:>8.3f}" for v in res.synthetic.values()))


@evaluate_app.command("fidelity")
def evaluate_fidelity_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    model: Optional[str] = GeneratorOpt,
    seeds: int = typer.Option(1, "--seeds", help="Renders per mask."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    layout_prior: Optional[str] = LayoutPriorOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """FID and KID (standard FID Inception, offline) of renders of held-out masks against the real slices; paired SSIM/PSNR."""
    from cmrstudio.evaluate.run import run_fidelity

    cases, hq = _eval_inputs(data, case, seeds, steps, guidance, model, layout_prior, write_card)
    res = run_fidelity(cases, model=model, seeds=seeds, device=device, write_card=write_card, command=command_line(), **hq)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    _print_fidelity(res)


def _print_fidelity(res) -> None:
    g = res.generator
    how = f" ({g.get('sampler', g['solver'])} {g['steps']} steps, guidance {g['guidance']:g})" if g["kind"] != "spade" else ""
    typer.echo(f"{g['model']}{how}: {res.n_synthetic} synthetic vs {res.n_real} real slices")
    typer.echo(f"  FID {res.fid:.1f}   KID {1000 * res.kid:.1f} ± {1000 * res.kid_std:.1f} (×10⁻³, ± std over subsets)   "
               f"paired SSIM {res.ssim:.3f}  PSNR {res.psnr:.1f} dB")
    if res.reference_fid_real_halves is not None:
        typer.echo(f"  reference: FID between two halves of the real slices ({res.n_real // 2} each) {res.reference_fid_real_halves:.1f}: how far real is from real at this size")


@evaluate_app.command("diversity")
def evaluate_diversity_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    model: Optional[str] = GeneratorOpt,
    seeds: int = typer.Option(3, "--seeds", help="Renders per mask (pairs of them are compared)."),
    masks: int = typer.Option(32, "--masks", help="Masks to render, spread over the cases."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    layout_prior: Optional[str] = LayoutPriorOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Diversity: MS-SSIM between renders of one mask with different seeds (lower = more varied)."""
    from cmrstudio.evaluate.run import run_diversity
    from cmrstudio.train.common import check_counts

    check_counts(masks=masks)
    cases, hq = _eval_inputs(data, case, 1, steps, guidance, model, layout_prior, write_card)
    res = run_diversity(cases, model=model, seeds=seeds, masks=masks, device=device, write_card=write_card, command=command_line(), **hq)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    _print_diversity(res)


def _print_diversity(res: dict) -> None:
    typer.echo(f"{res['generator']['model']}: MS-SSIM between seeds {res['ms_ssim_between_seeds']:.3f}"
               + (f" ± {res['ms_ssim_sd_over_masks']:.3f}" if res["ms_ssim_sd_over_masks"] is not None else "")
               + f" over {res['masks']} masks, {res['seeds']} seeds each (1 = the same image every time)")


@evaluate_app.command("all")
def evaluate_all_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes); default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    seeds: int = typer.Option(1, "--seeds", help="Renders per mask for fidelity and faithfulness."),
    space: str = typer.Option("inception", "--space", help="Feature space of the nearest-neighbour analysis."),
    utility: Optional[str] = typer.Option(None, "--utility", help="Also run the utility evaluation with this preset (cpu or full)."),
    max_members: Optional[int] = typer.Option(200, "--max-members", help="Cap the member slices of the membership attacks."),
    classifier_steps: int = typer.Option(400, "--classifier-steps", help="Training steps of the realism evaluation's machine reader."),
    out: Path = typer.Option(Path("evaluation"), "--out", help="Folder for the JSON results, figures and MODEL_report.html."),
    device: Optional[str] = typer.Option(None, "--device"),
):
    """Every evaluation of one generator on patients it was not trained on — fidelity, faithfulness, diversity, realism,
    privacy (and utility) — recorded in its card, then its HTML report."""
    from cmrstudio.evaluate.run import evaluate_all

    printers = {"fidelity": _print_fidelity, "faithfulness": _print_faithfulness, "diversity": _print_diversity,
                "privacy": _print_privacy, "utility": _print_utility, "report": lambda r: _print_report(r.info, r.path),
                "realism": _print_realism, "realism in patient": _print_realism}
    evaluate_all(data, case, model, seeds=seeds, space=space, utility=utility, max_members=max_members,
                 classifier_steps=classifier_steps, out=out, device=device,
                 command=command_line(), on_step=lambda name: typer.echo(f"== {name}"),
                 on_result=lambda name, res: printers[name](res), progress=_progress)


def _progress(i: int, n: int, msg: str) -> None:
    typer.echo(f"[{i}/{n}] {msg}", err=True)


@evaluate_app.command("realism")
def evaluate_realism_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes); default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    mode: str = typer.Option("synthetic", "--mode", help="synthetic (no real pixel) or in-patient (the scan's own surroundings outside a margin)."),
    steps: Optional[int] = EvalStepsOpt,
    classifier_steps: int = typer.Option(400, "--classifier-steps", help="Training steps of the machine reader."),
    readers: int = typer.Option(3, "--readers", help="Machine readers trained with their own seeds; their mean accuracy is reported, each one's beside it."),
    max_train: int = typer.Option(300, "--max-train", help="Training-patient slices the machine reader and the real-vs-real floor use."),
    seed: int = typer.Option(0, "--seed"),
    margin: Optional[float] = typer.Option(None, "--margin", help="In this patient: repaint within this many mm of the heart (default 5: the band around a scan's own outline left as it was)."),
    layout_prior: Optional[str] = LayoutPriorOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Realism on held-out patients: KID beside the real-vs-real floor, a trained machine reader's accuracy, and upsampling-grid artefacts."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.run import run_realism
    from cmrstudio.models.registry import get_model
    from cmrstudio.train.common import check_counts

    check_counts(classifier_steps=classifier_steps, max_train=max_train, readers=readers)  # before the data is read
    info = get_model(model, kind=generator_kinds())
    held = _held_out(case, info)
    if not held:
        raise CmrError(f"The card of '{info.name}' names no held-out patients; give them with --case.")
    check_layout_choice(layout_prior, write_card)
    hq = {k: v for k, v in (("steps", steps), ("layout_prior", layout_prior)) if v is not None}
    res = run_realism(cases_from(data), held, model=str(info.card_path), mode=mode, classifier_steps=classifier_steps, max_train=max_train,
                      seed=seed, device=device, write_card=write_card, command=command_line(), margin_mm=margin, readers=readers, **hq)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    _print_realism(res, info.name)


def _print_realism(res, name: str | None = None) -> None:
    name = name or res.generator.get("model")
    mode = res.mode
    lo, hi = res.machine_accuracy_ci
    g = res.grid_artefact
    margin = f" ({res.margin_mm:g} mm around the heart repainted)" if getattr(res, "margin_mm", None) else ""
    typer.echo(f"{name}, {mode}{margin}: {res.n_synthetic} renders of held-out masks vs {res.n_real} real held-out slices")
    typer.echo(f"  KID {res.kid:.4f} ± {res.kid_std:.4f}   (real vs real, other patients: {res.kid_real_floor:.4f} ± {res.kid_real_floor_std:.4f})   "
               f"FID {res.fid:.1f} (real vs real {res.fid_real_floor:.1f})")
    trained = f"{res.n_classifier_train} training-patient slices" + (f", {res.classifier_steps} steps" if res.classifier_steps else "")
    each = [v["accuracy"] for v in res.machine_readers]
    who = f"mean of {len(each)} readers" if len(each) > 1 else "one reader"
    spread = f"; readers {min(each):.1%}–{max(each):.1%}, SD {res.machine_accuracy_sd:.1%}" if len(each) > 1 else ""
    typer.echo(f"  machine reader (trained on {trained}; {who}): accuracy {res.machine_accuracy:.1%} "
               f"(95% CI over the images {lo:.1%}–{hi:.1%}, {res.machine_n} images{spread}), AUC {res.machine_auc:.3f}; 50% = cannot tell")
    typer.echo(f"  upsampling grid: peak {g['peak_ratio']:.2f} at period {g['period_px']} px ({g['spectrum']} spectrum); real scans {g.get('real_peak_ratio', float('nan')):.2f}")


@evaluate_app.command("sheet")
def evaluate_sheet_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients to show (case-id prefixes); default: the live model card's."),
    model: list[str] = typer.Option([], "--model", help="Generators, one column group each (default: the live and the HQ model)."),
    seeds: int = typer.Option(2, "--seeds", help="Fully synthetic renders per mask and model."),
    rows: int = typer.Option(6, "--rows", help="Masks (rows), spread over the held-out cases."),
    full: bool = typer.Option(False, "--full", help="Whole slices instead of the 160 mm heart frame."),
    out: Path = typer.Option(Path("contact_sheet.png"), "--out", help="The PNG to write."),
    device: Optional[str] = typer.Option(None, "--device"),
):
    """A contact sheet of held-out masks: the real slice | each model fully synthetic (several seeds) | each model in this patient."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.sheet import contact_sheet
    from cmrstudio.models.registry import get_model

    names = list(model) or ["spade", "flow"]
    infos = [get_model(m, kind=generator_kinds()) for m in names]
    held = _held_out(case, infos[0])
    cases = [c for c in cases_from(data) if not held or any(c.case_id.startswith(p) for p in held)]
    if not cases:
        raise CmrError(f"No case in {', '.join(data)} is one of the held-out patients {', '.join(held)}.")
    path = contact_sheet(cases, [str(i.card_path) for i in infos], out, seeds=seeds, rows=rows, full=full, device=device)
    typer.echo(f"Wrote {path}.")


@evaluate_app.command("report")
def evaluate_report_cmd(
    model: Optional[str] = typer.Argument(None, help="A model name or card path (default: the shipped SPADE model)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for MODEL_report.html."),
    figures: list[Path] = typer.Option([], "--figures", help="An evaluation's --out folder whose MODEL_*.png figures to embed; repeatable."),
):
    """A self-contained HTML report of a model's card and evaluation (tables, plots, plain-language lines, methods)."""
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.report import write_model_report
    from cmrstudio.models.registry import get_model

    info = get_model(model, kind=tuple(generator_kinds()) + ("segmenter",))
    _print_report(info, write_model_report(info, out, figures))


def _print_report(info, path) -> None:
    from cmrstudio.evaluate.report import plain_language

    for line in plain_language(info.card):
        typer.echo(f"- {line}")
    typer.echo(f"report: {path}")


@evaluate_app.command("segmenter")
def evaluate_segmenter_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Cases whose id starts with this; default: the segmenter card's held-out patients."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter (default: the shipped one)."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the segmenter's card."),
):
    """Dice and HD95 (mm) per structure of the segmenter on real patients it was not trained on."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.evaluate.cards import record_metric
    from cmrstudio.evaluate.segmentation import evaluate_segmenter
    from cmrstudio.models.registry import get_model

    info = get_model(segmenter, kind="segmenter")
    held = _held_out(case, info)
    cases = [c for c in cases_from(data) if not held or any(c.case_id.startswith(p) for p in held)]
    if not cases:
        raise CmrError(f"No case in {', '.join(data)} matches {', '.join(held)}; give the folder that holds them with --data.")
    res = evaluate_segmenter(cases, info, device=device)
    if write_card:
        record_metric(info, "held_out_segmentation", {**{k: v for k, v in res.to_dict().items() if k != "per_case"},
                                                      "cases_evaluated": [r["case"] for r in res.per_case]}, command=command_line())
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    typer.echo(f"{res.segmenter} on {res.cases} cases, {res.slices} heart slices (frame pixels {res.spacing_mm} mm):")
    typer.echo(f"  {'':<6}{'Dice':>14}{'HD95 (mm)':>18}{'missed slices':>15}")
    for name, v in res.summary.items():
        if name == "mean":
            continue
        sd = lambda k: f" ± {v[k + '_sd']:.3f}" if v.get(k + "_sd") is not None else ""  # noqa: E731
        typer.echo(f"  {name:<6}{v['dice']:>8.3f}{sd('dice'):>6}{v['hd95_mm']:>10.2f}{sd('hd95_mm'):>8}{v['missed_slices']:>15}")
    typer.echo(f"  mean  {res.summary['mean']['dice']:>8.3f}{'':>6}{res.summary['mean']['hd95_mm']:>10.2f}")


@evaluate_app.command("utility")
def evaluate_utility_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes), the test set; default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    preset: str = typer.Option("cpu", "--preset", help="cpu (minutes on 2 cores) or full (the GPU machine)."),
    fractions: Optional[str] = typer.Option(None, "--fractions", help="Fractions of the training patients, like 0.1,0.25,1 (default: the preset's)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Training seeds per arm (default: the preset's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fixed training iterations per segmenter (default: the preset's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for utility.json and the figure."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Segmenters trained on real, real + synthetic and synthetic slices at several fractions of the training patients,
    scored on held-out real patients (Dice, HD95) with a paired Wilcoxon test against real."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.run import run_utility, utility_preset
    from cmrstudio.models.registry import get_model

    pr = utility_preset(preset, fractions=None if fractions is None else [x.strip() for x in fractions.split(",") if x.strip()],
                        seeds=seeds, steps=steps)
    held = _held_out(case, get_model(model, kind=generator_kinds()))
    res, doc = run_utility(cases_from(data), held, model=model, preset=preset, options=pr, out=out, device=device,
                           write_card=write_card, command=command_line(), progress=_progress)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    _print_utility(res)


def _print_utility(res) -> None:
    typer.echo(f"{res.generator['model']}: {res.train_patients} training patients, {len(res.test_cases)} held-out cases; "
               f"{res.preset['steps']} iterations, {res.preset['seeds']} seeds")
    typer.echo(f"  {'fraction':>8} {'arm':<16}{'patients':>9}{'slices':>8}{'LV':>7}{'MYO':>7}{'RV':>7}{'mean Dice':>11}{'HD95 mm':>9}")
    for r in res.rows:
        f = lambda v: f"{v:.3f}" if v is not None else "  -  "  # noqa: E731
        hd = f"{r['mean_hd95_mm']:.1f}" if r["mean_hd95_mm"] is not None else "-"
        typer.echo(f"  {r['fraction']:>8g} {r['arm']:<16}{r['patients']:>9}{r['slices']:>8}{f(r['LV_dice']):>7}{f(r['MYO_dice']):>7}{f(r['RV_dice']):>7}"
                   f"{f(r['mean_dice']):>11}{hd:>9}")
    for t in res.tests:
        p = f"p = {t['wilcoxon_p']:.3g}" if t["wilcoxon_p"] is not None else "p: -"
        typer.echo(f"  {t['fraction']:g}: {t['arm']} vs real: mean Dice {t['mean_dice_difference']:+.3f} "
                   f"({t['wins']} better, {t['losses']} worse of {t['cases']} cases; Wilcoxon {p})")


@evaluate_app.command("privacy")
def evaluate_privacy_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes), the non-members; default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    space: str = typer.Option("inception", "--space", help="Feature space of the nearest-neighbour analysis: inception or pixel."),
    seeds: int = typer.Option(3, "--seeds", help="Renders per mask in the reconstruction attack."),
    max_members: Optional[int] = typer.Option(None, "--max-members", help="Cap the member slices of the attacks (a seeded sample)."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for privacy.json and the closest-pairs figure."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Nearest-neighbour memorisation and authenticity, and membership-inference attacks (training vs held-out patients)."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.run import run_privacy
    from cmrstudio.models.registry import get_model
    from cmrstudio.train.common import check_counts

    check_counts(seeds=seeds)
    if max_members is not None:
        check_counts(max_members=max_members)
    held = _held_out(case, get_model(model, kind=generator_kinds()))
    hq = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    res = run_privacy(cases_from(data), held, model=model, space=space, seeds=seeds, max_members=max_members, out=out, device=device,
                      write_card=write_card, command=command_line(), **hq)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    _print_privacy(res)


def _print_privacy(res) -> None:
    nn, g = res.nearest, res.generator
    typer.echo(f"{g['model']}: members {res.members['patients']} training patients ({res.members['slices']} slices), "
               f"non-members {res.nonmembers['patients']} held-out patients ({res.nonmembers['slices']} slices)")
    typer.echo(f"nearest neighbours ({nn['space']}): synthetic->train median {nn['synthetic_to_train_median']:.4g}, "
               f"new real patients->train {nn['holdout_to_train_median']:.4g} (ratio {nn['distance_ratio']:.2f})")
    typer.echo(f"  memorised (closer than 1/3 of any other patient's image): {nn['memorised']}/{nn['n_synthetic']} "
               f"= {100 * nn['memorisation_ratio']:.1f}% (new real patients: {100 * nn['holdout_memorisation_ratio']:.1f}%)")
    typer.echo(f"  authenticity {100 * nn['authenticity']:.1f}% (new real patients: {100 * nn['holdout_authenticity']:.1f}%)")
    for name, a in res.attacks.items():
        ci = a["auc_ci"]
        typer.echo(f"membership inference, {name}: AUC {a['auc']:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                   + f", TPR at 1% FPR {100 * a['tpr_at_1pct_fpr']:.1f}% ({a['members']} members, {a['nonmembers']} non-members)")
        typer.echo(f"    TPR at 0.1% FPR {100 * a['tpr_at_0_1pct_fpr']:.1f}% (with {a['nonmembers']} non-members the finest FPR is "
                   f"{100 * a['fpr_resolution']:.2g}%)")
        for d, b in a.get("by_dataset", {}).items():
            typer.echo(f"    within {d}: AUC {b['auc']:.3f} ({b['members']} members, {b['nonmembers']} non-members)")
        c = a.get("control")
        if c:
            typer.echo(f"    control (same attack, two halves of the new patients, {c['patients_per_half']} patients each): AUC {c['control_auc']:.3f}; "
                       f"gap {c['gap']:+.3f} (95% interval {c['gap_ci'][0]:+.3f} to {c['gap_ci'][1]:+.3f}, {c['resamples']} resamples)"
                       + (f"; member-vs-member control AUC {c['member_control_auc']:.3f}" if "member_control_auc" in c else ""))
        else:
            typer.echo("    control: fewer than 4 new patients, no control split (the AUC alone cannot say whether the model leaks)")
    cp = res.copies or {}
    if "reproduced" in cp:
        typer.echo(f"copies: {cp['reproduced_n']}/{cp['members']} training slices = {100 * cp['reproduced']:.1f}% reproduced by a render of a "
                   f"training mask (threshold {cp['threshold']:.4g}: {cp['threshold_from']}); new patients {100 * cp['nonmember_control']:.1f}%")
    elif cp.get("error"):
        typer.echo(f"copies: not measured ({cp['error']})")
    if res.figure:
        typer.echo(f"closest pairs: {res.figure}")



@evaluate_app.command("checkpoints")
def evaluate_checkpoints_cmd(
    run: Path = typer.Argument(..., help="A training run folder trained with --keep-checkpoints (its checkpoints/ folder)."),
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    max_slices: int = typer.Option(120, "--max-slices", help="Heart slices to render with each checkpoint, spread evenly over the cases; 0: every heart slice (what `evaluate all` renders: screen the checkpoint you will ship this way, a grid can hide in a subset)."),
    mode: str = typer.Option("synthetic", "--mode", help="synthetic (no real pixel; best: highest Dice) or in-patient (scene models: the slice's own surroundings outside the 5 mm band; best: lowest KID)."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter for the Dice on renders (default: the shipped one)."),
    seed: int = typer.Option(0, "--seed", help="First seed; slice j gets seed + j, the same for every checkpoint."),
    seed_sets: int = typer.Option(1, "--seed-sets", help="Render every slice this many times (seed sets seed + k × slices) and pool them into one KID, with the spread of each set's own KID beside it: on 120 slices one set's KID moves by about 4 ×10⁻³ between seed sets, more than its ±."),
    compare: list[str] = typer.Option([], "--compare", help="Another model (name or card: the shipped one, a soup) measured alike on the same slices and seeds, for reference; repeatable; never named best."),
    from_step: Optional[int] = typer.Option(None, "--from-step", help="Only the checkpoints from this step on (those a resumed run added, say)."),
    to_step: Optional[int] = typer.Option(None, "--to-step", help="Only the checkpoints up to this step."),
    device: Optional[str] = typer.Option(None, "--device"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for checkpoints.json."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Measure every kept checkpoint of a run the same way on held-out patients (KID, FID, segmenter Dice, upsampling
    grid) to pick the one to ship; held-out patients: --case, else those the run's card names."""
    from cmrstudio.evaluate.checkpoints import checkpoint_cards, evaluate_checkpoints
    from cmrstudio.evaluate.realism import check_mode
    from cmrstudio.evaluate.run import write_json

    if max_slices < 0:
        raise CmrError(f"--max-slices {max_slices} must be 0 (every heart slice) or more.")
    check_mode(mode)
    cards = checkpoint_cards(run, from_step, to_step)
    cases, _ = _eval_inputs(data, case, 1, None, None, str(cards[0]))
    how = "fully synthetic" if mode == "synthetic" else "in this patient"
    sets = f", {seed_sets} seed sets" if seed_sets > 1 else ""
    header = [f"{len(cards)} checkpoint(s) of {run}, each rendering the same heart slices {how}{sets}:"]

    def show(row: dict) -> None:  # the header with the first measured row: a refusal before it leaves no table behind
        while header:
            typer.echo(header.pop())
        typer.echo(_checkpoint_line(row))

    res = evaluate_checkpoints(run, cases, max_slices=max_slices or None, segmenter=segmenter, device=device, seed=seed,
                               progress=None if as_json else show, mode=mode, seed_sets=seed_sets, compare=list(compare),
                               from_step=from_step, to_step=to_step)
    if out is not None:
        res["json"] = str(write_json(out, "checkpoints.json", res))
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    real = res["real"]
    typer.echo(f"real slices ({res['slices']} from {len(res['cases'])} volumes): Dice {real['dice']['mean']:.3f}, grid peak {real['grid_peak_ratio']:.2f}")
    typer.echo(f"best: {res['best']} ({res['best_rule']})" + (f"; written to {res['json']}" if out is not None else ""))


def _checkpoint_line(row: dict) -> str:
    d = row["dice"]
    per = " / ".join(f"{d[k]:.3f}" if d.get(k) is not None else "-" for k in ("LV", "MYO", "RV"))
    spread = f" (seed sets: SD {1000 * row['kid_seed_sd']:.1f})" if "kid_seed_sd" in row else ""
    where = f"step {row['step']:>7}" if row["step"] is not None else f"{row['name']} (compared)"
    return (f"  {where}  KID {1000 * row['kid']:6.1f} ± {1000 * row['kid_std']:4.1f} ×10⁻³{spread}  FID {row['fid']:6.1f}  "
            f"Dice {d['mean']:.3f} ({per})  grid {row['grid']['peak_ratio']:.2f}")
