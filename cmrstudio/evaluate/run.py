"""Running evaluations the way ``cmrstudio evaluate`` does: on held-out patients, recorded in the model's card.

Each ``run_*`` function runs one evaluation and, when asked, records its result in the generator's card
(:func:`cmrstudio.evaluate.cards.record_metric`); :func:`evaluate_all` runs them in sequence and writes the
model's HTML report. Nothing here prints: the CLI (or the GUI) shows the results it gets back. Heavy modules
(torch, the engine) are imported only when an evaluation runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cmrstudio.errors import CmrError
from cmrstudio.evaluate.cards import record_metric

@dataclass
class ModelReport:
    """The HTML report :func:`evaluate_all` wrote, and the model (its card as recorded) it describes."""

    info: Any  # cmrstudio.models.checkpoint.ModelInfo
    path: Path


def held_out(case: Sequence[str], info) -> list[str]:
    """The held-out patients given (case-id prefixes), else those the model's card names."""
    return list(case) or list(info.card.get("training", {}).get("held_out_case_prefixes") or [])


def matching(cases: Iterable, prefixes: Sequence[str]) -> list:
    """The cases whose id starts with one of ``prefixes`` (every case without any)."""
    return [c for c in cases if not prefixes or any(c.case_id.startswith(p) for p in prefixes)]


def select_cases(cases: Iterable, prefixes: Sequence[str], data: Sequence = ()) -> list:
    """:func:`matching`, refused in one sentence when nothing matches; ``data`` names where the cases came from."""
    picked = matching(cases, prefixes)
    if not picked:
        raise CmrError(f"No case in {', '.join(map(str, data))} matches --case {', '.join(prefixes)}.")
    return picked


def write_json(out: str | Path, name: str, doc: dict) -> Path:
    """``out``/``name``: ``doc`` as indented JSON, written atomically (``out`` is created)."""
    from cmrstudio.io.common import write_text_atomic

    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / name
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return path


def _cases_evaluated(cases) -> list[str]:
    return sorted({c.case_id for c in cases})


def run_fidelity(cases, model=None, seeds: int = 1, device: str | None = None, write_card: bool = False,
                 command: str | None = None, **hq):
    """FID/KID and paired SSIM/PSNR of renders of ``cases``' masks (:func:`~cmrstudio.evaluate.fidelity.evaluate_fidelity`);
    recorded as ``fidelity`` when ``write_card``."""
    from cmrstudio.evaluate.fidelity import evaluate_fidelity

    res = evaluate_fidelity(cases, model=model, seeds=seeds, device=device, **hq)
    if write_card:
        record_metric(model, "fidelity", {**res.to_dict(), "cases_evaluated": _cases_evaluated(cases)}, command=command)
    return res


def run_faithfulness(cases, model=None, segmenter=None, seeds: int = 2, device: str | None = None, write_card: bool = False,
                     command: str | None = None, **hq):
    """Dice of the segmenter on renders of ``cases``' masks beside the real images; recorded as ``mask_faithfulness_dice``."""
    from cmrstudio.evaluate.faithfulness import evaluate_faithfulness
    from cmrstudio.models.registry import get_model

    res = evaluate_faithfulness(cases, model=model, segmenter=segmenter, seeds=seeds, device=device, **hq)
    if write_card:
        seg = get_model(segmenter, kind="segmenter")
        record_metric(model, "mask_faithfulness_dice", {**{k: v for k, v in res.to_dict().items() if k != "per_case"}, "segmenter": seg.name,
                                                        "segmenter_sha256": seg.card.get("sha256"), "cases_evaluated": [r["case"] for r in res.per_case]}, command=command)
    return res


def run_diversity(cases, model=None, seeds: int = 3, masks: int = 32, device: str | None = None, write_card: bool = False,
                  command: str | None = None, **hq) -> dict:
    """MS-SSIM between renders of one mask with different seeds; recorded as ``diversity``."""
    from cmrstudio.evaluate.fidelity import evaluate_diversity

    res = evaluate_diversity(cases, model=model, seeds=seeds, masks=masks, device=device, **hq)
    if write_card:
        record_metric(model, "diversity", {**res, "cases_evaluated": _cases_evaluated(cases)}, command=command)
    return res


def run_privacy(cases, held: list[str], model=None, space: str = "inception", seeds: int = 3, max_members: int | None = None,
                out: str | Path | None = None, device: str | None = None, write_card: bool = False, command: str | None = None, **hq):
    """Memorisation, authenticity and membership inference (:func:`~cmrstudio.evaluate.privacy.evaluate_privacy`);
    ``out``/privacy.json when ``out`` is given; recorded as ``privacy``."""
    from cmrstudio.evaluate.privacy import evaluate_privacy

    res = evaluate_privacy(cases, held, model=model, space=space, seeds=seeds, max_members=max_members, out=out, device=device, **hq)
    doc = res.to_dict()
    if out is not None:
        write_json(out, "privacy.json", doc)
    if write_card:
        record_metric(model, "privacy", {k: v for k, v in doc.items() if k != "figure"}, command=command)
    return res


def run_realism(cases, held: list[str], model=None, mode: str = "synthetic", classifier_steps: int = 400, max_train: int = 300,
                seed: int = 0, device: str | None = None, write_card: bool = False, command: str | None = None,
                margin_mm: float | None = None, readers: int = 3, **hq):
    """KID beside the real-vs-real floor, trained machine readers and the grid-artefact spectrum
    (:func:`~cmrstudio.evaluate.realism.evaluate_realism`) on the ``held`` patients of ``cases``, the others as reference;
    recorded as ``realism_synthetic`` or ``realism_in_patient``."""
    from cmrstudio.evaluate.realism import evaluate_realism
    from cmrstudio.settings import UNCHANGED_MARGIN_MM

    if write_card and margin_mm is not None and float(margin_mm) != UNCHANGED_MARGIN_MM:
        raise CmrError(f"The card records realism at the {UNCHANGED_MARGIN_MM:g} mm band a scan's own outline gets; leave out --write-card to measure "
                       f"a margin of {margin_mm:g} mm.")

    held_cases = [c for c in cases if any(c.case_id.startswith(p) for p in held)]
    reference = [c for c in cases if not any(c.case_id.startswith(p) for p in held)]
    if not held_cases:
        raise CmrError(f"No given case is one of the held-out patients {', '.join(held)}.")
    res = evaluate_realism(held_cases, reference, model=model, mode=mode, classifier_steps=classifier_steps, max_train_slices=max_train,
                           device=device, seed=seed, margin_mm=margin_mm, readers=readers, **hq)
    if write_card:
        record_metric(model, f"realism_{mode.replace('-', '_')}", {**res.to_dict(), "held_out": list(held)}, command=command)
    return res


def utility_preset(preset: str, fractions: Sequence | None = None, seeds: int | None = None, steps: int | None = None) -> dict:
    """The options of a utility preset (``cpu`` or ``full``), with the given ones in place of its own."""
    from cmrstudio.evaluate.utility import PRESETS

    if preset not in PRESETS:
        raise CmrError(f"--preset {preset!r} is not known; use one of {', '.join(PRESETS)}.")
    pr = asdict(PRESETS[preset])
    if fractions is not None:
        pr["fractions"] = list(fractions)
    if seeds is not None:
        pr["seeds"] = seeds
    if steps is not None:
        pr["steps"] = steps
    return pr


def run_utility(cases, held: list[str], model=None, preset: str = "cpu", options: dict | None = None, out: str | Path | None = None,
                device: str | None = None, write_card: bool = False, command: str | None = None, progress=None):
    """Segmenters trained on real, real + synthetic and synthetic slices, scored on the held-out patients.

    ``options``: what :func:`utility_preset` returned (default: ``preset``'s own). With ``out``, writes utility.json
    and the figure. Recorded as ``utility`` (with ``preset_name``). Returns the result and its document (with the
    figure's path when one was drawn).
    """
    from cmrstudio.evaluate.utility import evaluate_utility, utility_figure

    pr = options if options is not None else utility_preset(preset)
    res = evaluate_utility(cases, held, model=model, device=device, progress=progress, **pr)
    doc = res.to_dict()
    if out is not None:
        write_json(out, "utility.json", doc)
        doc["figure"] = utility_figure(Path(out) / f"{res.generator['model']}_utility.png", res)
    if write_card:
        record_metric(model, "utility", {k: v for k, v in doc.items() if k not in ("runs", "figure")} | {"preset_name": preset}, command=command)
    return res, doc


def evaluate_all(data: Sequence[str], case: Sequence[str] = (), model=None, *, seeds: int = 1, space: str = "inception",
                 utility: str | None = None, max_members: int | None = 200, classifier_steps: int = 400,
                 out: str | Path = "evaluation", device: str | None = None,
                 command: str | None = None, on_step: Callable[[str], None] | None = None,
                 on_result: Callable[[str, Any], None] | None = None, progress=None) -> dict[str, Any]:
    """Every evaluation of one generator on patients it was not trained on, each recorded in its card, then its HTML report.

    ``data``: folders or files of real images with expert masks (training and held-out patients); ``case``: the held-out
    patients (case-id prefixes), by default those the model's card names. Runs fidelity (``seeds`` renders per mask),
    faithfulness (``seeds``), diversity (3 seeds, 16 masks), realism (its machine reader trained ``classifier_steps``
    steps; in this patient too for whole-slice models), privacy (``space``, 2 seeds, ``max_members``; privacy.json
    and the closest-pairs figure in ``out``) and, when ``utility`` names a preset, utility (utility.json and its
    figure); then writes ``out``/MODEL_report.html with the figures in ``out``. ``command`` is recorded beside each
    figure. ``on_step(name)`` is called before each evaluation, ``on_result(name, result)`` after each and after the
    report (``"report"``, a :class:`ModelReport`); ``progress(i, n, message)`` reports the utility evaluation's steps.
    Returns ``{name: result}`` for each evaluation and ``"report"``.
    """
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.report import write_model_report
    from cmrstudio.models.registry import get_model
    from cmrstudio.train.common import check_counts

    info = get_model(model, kind=generator_kinds())
    model = str(info.card_path)
    held = held_out(case, info)
    if not held:
        raise CmrError(f"The card of '{info.name}' names no held-out patients; give them with --case.")
    check_counts(seeds=seeds, classifier_steps=classifier_steps)  # bad options are refused before hours of evaluation, not after
    if max_members is not None:
        check_counts(max_members=max_members)
    utility_options = utility_preset(utility) if utility else None
    scene = (info.card.get("conditioning") or {}).get("scheme") == "scene-v1"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded: list = []

    def cases() -> list:  # read once, when the first evaluation needs them
        if not loaded:
            loaded.append(cases_from(data))
        return loaded[0]

    rec = dict(model=model, device=device, write_card=True, command=command)

    def fidelity():
        check_counts(seeds=seeds)
        return run_fidelity(select_cases(cases(), held, data), seeds=seeds, **rec)

    def faithfulness():
        check_counts(seeds=seeds)
        return run_faithfulness(select_cases(cases(), held, data), segmenter=None, seeds=seeds, **rec)

    def diversity():
        check_counts(masks=16)
        return run_diversity(select_cases(cases(), held, data), seeds=3, masks=16, **rec)

    def privacy():
        check_counts(seeds=2)
        if max_members is not None:
            check_counts(max_members=max_members)
        return run_privacy(cases(), held, space=space, seeds=2, max_members=max_members, out=out, **rec)

    def utility_():
        return run_utility(cases(), held, preset=utility, options=utility_options, out=out, progress=progress, **rec)[0]

    def realism(mode):
        return lambda: run_realism(cases(), held, mode=mode, classifier_steps=classifier_steps, **rec)

    steps = [("fidelity", fidelity), ("faithfulness", faithfulness), ("diversity", diversity), ("realism", realism("synthetic"))]
    if scene:  # whole-slice models render in a patient's own scan too
        steps.append(("realism in patient", realism("in-patient")))
    steps.append(("privacy", privacy))
    if utility:
        steps.append(("utility", utility_))
    results: dict[str, Any] = {}
    for name, fn in steps:
        if on_step is not None:
            on_step(name)
        results[name] = fn()
        if on_result is not None:
            on_result(name, results[name])
    info = get_model(model, kind=tuple(generator_kinds()) + ("segmenter",))
    results["report"] = ModelReport(info, write_model_report(info, out, [out]))
    if on_result is not None:
        on_result("report", results["report"])
    return results
