"""A model's evaluation in one place: headline numbers for its card, an HTML fragment the studio shows,
and a self-contained HTML report (tables, plots, plain-language lines, methods) per model.

Everything is read from the card's ``metrics`` (written by ``cmrstudio evaluate ... --write-card``),
so the report says exactly what was measured and with which command; figures found in the given
folders (closest pairs, utility) are embedded.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from cmrstudio.errors import CmrError


def _f(v, fmt: str = ".3f", none: str = "—") -> str:
    try:
        return format(float(v), fmt) if v is not None else none
    except (TypeError, ValueError):
        return none


def _times(v, factor: float):
    """``v`` in other units (×10⁻³, %), None where not measured."""
    return None if v is None else factor * v


def privacy_measured(card: dict) -> bool:
    return "privacy" in card.get("metrics", {}) or bool(card.get("training", {}).get("differential_privacy"))


def headline(card: dict) -> dict:
    """The few numbers a reader of a card needs first (None where not measured)."""
    m = card.get("metrics", {})
    fid, fa, pr, ut, dv = m.get("fidelity", {}), m.get("mask_faithfulness_dice", {}), m.get("privacy", {}), m.get("utility", {}), m.get("diversity", {})
    attacks = pr.get("attacks", {})
    # the headline attack: the one furthest above its control (the raw AUC where no control could be run)
    gap = lambda a: (a.get("control") or {}).get("gap")  # noqa: E731
    controlled = {k: a for k, a in attacks.items() if gap(a) is not None}
    best = max((controlled or attacks).items(), key=lambda kv: (gap(kv[1]) if controlled else kv[1].get("auc")) or 0, default=(None, {}))
    ctl = best[1].get("control") or {}
    cp = pr.get("copies") or {}
    dp = card.get("training", {}).get("differential_privacy")
    seg = m.get("held_out_segmentation", {}).get("summary", {})
    h = {
        "fid": fid.get("fid"), "kid": fid.get("kid"), "kid_std": fid.get("kid_std"),
        "faithfulness_dice_synthetic": (fa.get("synthetic") or {}).get("mean"), "faithfulness_dice_real": (fa.get("real") or {}).get("mean"),
        "diversity_ms_ssim": dv.get("ms_ssim_between_seeds"),
        "memorisation_ratio": (pr.get("nearest") or {}).get("memorisation_ratio"), "authenticity": (pr.get("nearest") or {}).get("authenticity"),
        "authenticity_new_patients": (pr.get("nearest") or {}).get("holdout_authenticity"),
        "membership_auc": best[1].get("auc"), "membership_attack": best[0], "membership_tpr_at_1pct_fpr": best[1].get("tpr_at_1pct_fpr"),
        "membership_tpr_at_0_1pct_fpr": best[1].get("tpr_at_0_1pct_fpr"),
        "membership_gap": ctl.get("gap"), "membership_gap_ci": ctl.get("gap_ci"), "membership_control_auc": ctl.get("control_auc"),
        "copies_reproduced": cp.get("reproduced"), "copies_control": cp.get("nonmember_control"),
        "private": bool(dp) if privacy_measured(card) else None,
        "dp_epsilon": dp.get("epsilon") if dp else None, "dp_delta": dp.get("delta") if dp else None,
        "segmenter_dice": (seg.get("mean") or {}).get("dice"), "segmenter_hd95_mm": (seg.get("mean") or {}).get("hd95_mm"),
    }
    for mode in ("synthetic", "in_patient"):  # can a kernel distance or a trained reader tell its renders from real scans
        r = m.get(f"realism_{mode}") or {}
        h |= {f"realism_{mode}_kid": r.get("kid"), f"realism_{mode}_kid_floor": r.get("kid_real_floor"),
              f"realism_{mode}_reader_accuracy": r.get("machine_accuracy"), f"realism_{mode}_reader_auc": r.get("machine_auc")}
    if ut.get("tests"):
        t = [x for x in ut["tests"] if x["arm"] == "real+synthetic"]
        h["utility_real_plus_synthetic_dice_gain"] = {str(x["fraction"]): x["mean_dice_difference"] for x in t}
    return {k: v for k, v in h.items() if v is not None}


def plain_language(card: dict) -> list[str]:
    """One sentence per measured aspect, for a reader who is not a statistician."""
    h, out = headline(card), []
    if "faithfulness_dice_synthetic" in h:
        out.append(f"A segmenter trained on real scans finds the painted anatomy in this model's images with Dice "
                   f"{h['faithfulness_dice_synthetic']:.2f}, against {h.get('faithfulness_dice_real', float('nan')):.2f} on real scans of the same patients.")
    if "fid" in h:
        out.append(f"As a distribution its images are FID {h['fid']:.0f} / KID {1000 * h['kid']:.0f}×10⁻³ from real held-out slices (0 = indistinguishable features; "
                   "compare models on the same data only).")
    for mode, how in (("synthetic", "Fully synthetic (no real pixel)"), ("in_patient", "Painted into a patient's own slice")):
        if f"realism_{mode}_reader_accuracy" in h:
            kid = (f"; KID {1000 * h[f'realism_{mode}_kid']:.0f}×10⁻³ against {1000 * h[f'realism_{mode}_kid_floor']:.0f}×10⁻³ between two sets "
                   "of real patients" if f"realism_{mode}_kid" in h and f"realism_{mode}_kid_floor" in h else "")
            out.append(f"{how}, a classifier trained to tell its images from real scans is right on "
                       f"{100 * h[f'realism_{mode}_reader_accuracy']:.0f}% of single images of new patients (50% = cannot tell){kid}.")
    if "memorisation_ratio" in h:
        out.append(f"{100 * h['memorisation_ratio']:.1f}% of its images are near copies of a training image; "
                   f"{100 * h.get('authenticity', 0):.0f}% are authentic (new real patients: {100 * h.get('authenticity_new_patients', 0):.0f}%).")
    if "membership_gap" in h:
        g, lo, hi = h["membership_gap"], *h["membership_gap_ci"]
        verdict = ("no evidence that it leaks who was in its training set" if lo <= 0 else
                   "some leakage of who was in its training set" if g < 0.15 else "substantial leakage of who was in its training set")
        out.append(f"Membership attack ({h['membership_attack'].replace('_', ' ')}): AUC {h['membership_auc']:.2f}, against {h['membership_control_auc']:.2f} "
                   f"for the same attack on two halves of new patients; the gap, {g:+.2f} (95% interval {lo:+.2f} to {hi:+.2f}), is {verdict}. "
                   f"It catches {100 * h['membership_tpr_at_1pct_fpr']:.0f}% of members at 1% false alarms.")
    elif "membership_auc" in h:
        a = h["membership_auc"]
        verdict = "close to chance" if a < 0.6 else ("some" if a < 0.75 else "substantial")
        out.append(f"An attacker holding a patient's image and mask can tell whether that patient was in the training set with AUC {a:.2f} "
                   f"(0.5 = chance; {verdict} leakage; no control split could be run), catching {100 * h['membership_tpr_at_1pct_fpr']:.0f}% "
                   "of members at 1% false alarms.")
    if "copies_reproduced" in h:
        out.append(f"{100 * h['copies_reproduced']:.1f}% of its training slices are reproduced by some render of their masks (closer than a "
                   f"patient's own heart at the other phase); for patients it never saw, {100 * h['copies_control']:.1f}%.")
    if "dp_epsilon" in h:
        out.append(f"It was trained with differential privacy, ε = {h['dp_epsilon']:.2f} at δ = {h['dp_delta']:g} per training slice: "
                   "a formal bound on what any render can reveal about one training slice.")
        pre = (card.get("training") or {}).get("pretraining") or {}
        if pre.get("public_only"):
            seen = ", ".join(str(d.get("dataset")) for d in pre.get("data", []))
            out.append(f"It was first pre-trained on public data only ({seen}, model {pre.get('name')}); the ε covers only its "
                       "fine-tuning on the private data.")
    elif h.get("private") is False:
        out.append("It was trained without differential privacy: no formal bound on what it can reveal about its training patients.")
    if "segmenter_dice" in h:
        out.append(f"On patients it never saw it segments with mean Dice {h['segmenter_dice']:.2f} and HD95 {h['segmenter_hd95_mm']:.1f} mm.")
    return out


def card_html(card: dict) -> str:
    """An HTML fragment (Qt's rich text subset: tables, bold, small) of a card and its evaluation."""
    e = html.escape
    tr = card.get("training", {})
    parts = [f"<h3>{e(card.get('name', '?'))} <small>({e(card.get('kind', '?'))})</small></h3>"]
    data = ", ".join(f"{d.get('dataset')} ({d.get('cases')} cases)" for d in tr.get("data", []))
    parts.append(f"<p><b>Trained on</b> {e(data or 'unknown')}; held out: {e(', '.join(tr.get('held_out_case_prefixes') or []) or 'none')}; "
                 f"{tr.get('iterations', '?')} iterations, {e(str(tr.get('hardware', '')))}.</p>")
    lines = plain_language(card)
    if lines:
        parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in lines) + "</ul>")
    m = card.get("metrics", {})
    rows = []
    for key, label in (("fidelity", "Fidelity"), ("realism_synthetic", "Realism, fully synthetic"),
                       ("realism_in_patient", "Realism, in the patient's slice"), ("mask_faithfulness_dice", "Mask faithfulness (Dice)"),
                       ("diversity", "Diversity"), ("privacy", "Privacy"), ("utility", "Utility"), ("held_out_segmentation", "Segmentation (held-out)")):
        if key in m:
            rows.append(f"<tr><td><b>{label}</b></td><td>{e(_summary(key, m[key]))}</td><td><small>{e(m[key].get('command', ''))}</small></td></tr>")
    dp = tr.get("differential_privacy")
    if dp:
        rows.append(f"<tr><td><b>Differential privacy</b></td><td>ε {dp['epsilon']:.3f} (target {dp['target_epsilon']}), δ {dp['delta']:g}, "
                    f"noise {dp['noise_multiplier']:.3f}, clip {dp['max_grad_norm']}, {dp['steps_taken']} steps, stopped by {e(dp['stopped_by'])}"
                    + (f"; covers {e(dp['covers'])}" if dp.get("covers") else "") + "</td><td></td></tr>")
    if rows:
        parts.append("<table border='1' cellpadding='4' cellspacing='0'><tr><th>Aspect</th><th>Figures</th><th>Reproduce</th></tr>" + "".join(rows) + "</table>")
    else:
        parts.append("<p><i>Not evaluated yet: run <code>cmrstudio evaluate fidelity|faithfulness|realism|privacy|utility --write-card</code>.</i></p>")
    if card.get("terms"):
        parts.append(f"<p><small>{e(str(card['terms'] if isinstance(card['terms'], str) else card['terms'].get('summary', '')))}</small></p>")
    return "\n".join(parts)


def _summary(key: str, v: dict) -> str:
    if key == "fidelity":
        return (f"FID {_f(v.get('fid'), '.1f')}, KID {_f(_times(v.get('kid'), 1000), '.1f')} ± "
                f"{_f(_times(v.get('kid_std'), 1000), '.1f')} ×10⁻³, SSIM {_f(v.get('ssim'))}, PSNR {_f(v.get('psnr'), '.1f')} dB "
                f"({v.get('n_synthetic')} synthetic vs {v.get('n_real')} real)")
    if key.startswith("realism_"):
        votes = [x["accuracy"] for x in v.get("machine_readers") or []]
        lo, hi = v.get("machine_accuracy_ci") or (None, None)
        spread = f"; {len(votes)} readers, {_f(100 * min(votes), '.1f')}–{_f(100 * max(votes), '.1f')}%" if len(votes) > 1 else ""
        g = v.get("grid_artefact") or {}
        return (f"KID {_f(_times(v.get('kid'), 1000), '.1f')} ± {_f(_times(v.get('kid_std'), 1000), '.1f')} ×10⁻³ "
                f"(real vs real {_f(_times(v.get('kid_real_floor'), 1000), '.1f')}), FID {_f(v.get('fid'), '.1f')}; "
                f"machine reader {_f(_times(v.get('machine_accuracy'), 100), '.1f')}% "
                f"(95% CI {_f(_times(lo, 100), '.1f')}–{_f(_times(hi, 100), '.1f')}%{spread}), "
                f"AUC {_f(v.get('machine_auc'))}; upsampling grid {_f(g.get('peak_ratio'), '.2f')} (real {_f(g.get('real_peak_ratio'), '.2f')}) "
                f"({v.get('n_synthetic')} renders vs {v.get('n_real')} real)")
    if key == "mask_faithfulness_dice":
        s, r = v.get("synthetic", {}), v.get("real", {})
        return "synthetic " + ", ".join(f"{k} {_f(s.get(k))}" for k in ("LV", "MYO", "RV", "mean")) + " | real " + \
            ", ".join(f"{k} {_f(r.get(k))}" for k in ("LV", "MYO", "RV", "mean")) + f" ({v.get('cases')} cases)"
    if key == "diversity":
        return f"MS-SSIM between seeds {_f(v.get('ms_ssim_between_seeds'))} over {v.get('masks')} masks"
    if key == "privacy":
        nn = v.get("nearest", {})
        within = lambda a: (" [within " + ", ".join(f"{d} {_f(b.get('auc'), '.2f')}" for d, b in a["by_dataset"].items()) + "]") \
            if a.get("by_dataset") else ""  # noqa: E731
        gap = lambda a: (f", gap to control {a['control']['gap']:+.3f} [{a['control']['gap_ci'][0]:+.3f}, {a['control']['gap_ci'][1]:+.3f}]"  # noqa: E731
                         if a.get("control") else "")
        att = "; ".join(f"{k}: AUC {_f(a.get('auc'))}{within(a)}{gap(a)}, TPR@1%FPR {_f(a.get('tpr_at_1pct_fpr'))}, "
                        f"TPR@0.1%FPR {_f(a.get('tpr_at_0_1pct_fpr'))}" for k, a in v.get("attacks", {}).items())
        cp = v.get("copies") or {}
        copies = (f"; training slices reproduced {_f(100 * cp['reproduced'], '.1f')}% (new patients {_f(100 * cp['nonmember_control'], '.1f')}%)"
                  if "reproduced" in cp else "")
        return (f"memorised {_f(100 * nn.get('memorisation_ratio', 0), '.1f')}%, authenticity {_f(100 * nn.get('authenticity', 0), '.1f')}% "
                f"(new patients {_f(100 * (nn.get('holdout_authenticity') or 0), '.1f')}%), NN distance ratio {_f(nn.get('distance_ratio'), '.2f')}; {att}{copies}")
    if key == "utility":
        return "; ".join(f"{t['fraction']:g}: {t['arm']} {t['mean_dice_difference']:+.3f} Dice (p {_f(t.get('wilcoxon_p'), '.3g')})" for t in v.get("tests", []))
    if key == "held_out_segmentation":
        s = v.get("summary", {})
        return ", ".join(f"{k} Dice {_f(s[k].get('dice'))} / HD95 {_f(s[k].get('hd95_mm'), '.1f')} mm" for k in ("LV", "MYO", "RV") if k in s) + \
            f" ({v.get('cases')} cases)"
    return ""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _finish(fig, ax, title: str, caption: str) -> tuple[str, str]:
    """Legend, title and layout of a report plot; (caption, PNG as base64), the figure closed."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return caption, png


def _plots(card: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    m = card.get("metrics", {})
    fa = m.get("mask_faithfulness_dice")
    if fa:
        fig, ax = plt.subplots(figsize=(4.2, 3))
        names = ["LV", "MYO", "RV", "mean"]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [fa["real"].get(n) or 0 for n in names], 0.4, label="real images")
        ax.bar([i + 0.2 for i in x], [fa["synthetic"].get(n) or 0 for n in names], 0.4, label="synthetic images")
        ax.set_xticks(list(x), names)
        ax.set_ylim(0, 1)
        ax.set_ylabel("segmenter Dice")
        out.append(_finish(fig, ax, "Mask faithfulness", "Mask faithfulness: the segmenter's Dice on real and on synthetic images of the same masks"))
    attacks = (m.get("privacy") or {}).get("attacks", {})
    if any("roc" in a for a in attacks.values()):
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        ax.plot([0, 1], [0, 1], "k:", label="chance")
        for k, a in attacks.items():
            if "roc" in a:
                ax.plot(a["roc"]["fpr"], a["roc"]["tpr"], label=f"{k} (AUC {a['auc']:.2f})")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        out.append(_finish(fig, ax, "Membership inference", "Membership-inference ROC curves (members: training patients; non-members: held-out patients)"))
    return out


METHODS = (
    "Fidelity: FID and KID on the standard FID InceptionV3 pool3 features (offline weights, checksum checked); KID is the unbiased "
    "MMD² with a cubic kernel averaged over subsets (± SD). SSIM/PSNR are paired with the real image of the same mask. Mask faithfulness: "
    "the bundled segmenter (trained on real scans only) segments renders of held-out expert masks; Dice against the painted mask, beside its "
    "Dice on the real images. Diversity: MS-SSIM between renders of one mask with different seeds. Privacy: nearest neighbours in Inception "
    "feature space between synthetic images (renders of held-out masks) and training images; a synthetic image is memorised when its nearest "
    "training image is closer than 1/3 of the nearest image of any other patient; authenticity after Alaa et al. 2022. Membership inference: "
    "training patients are members, held-out patients non-members; scores are the reconstruction distance over seeds and, for diffusion/flow, "
    "the denoising loss at fixed noise levels; ROC AUC with DeLong's interval and the TPR at 1% FPR. Utility: segmenters trained for fixed "
    "iterations on real, real + synthetic and synthetic slices of a fraction of the training patients, scored on held-out patients (Dice, HD95 "
    "in mm, 2D per slice) with a paired Wilcoxon test against real. All splits are by patient."
)


def write_model_report(model=None, out: str | Path = "report", figures: list[str | Path] = ()) -> Path:
    """``out``/``<model>_report.html``: a self-contained report of a model's card and evaluation."""
    from cmrstudio.io.common import write_text_atomic
    from cmrstudio.models.registry import get_model

    from cmrstudio.engine.factory import generator_kinds

    info = model if hasattr(model, "card") else get_model(model, kind=tuple(generator_kinds()) + ("segmenter",))
    card = {**info.card, "name": info.name, "kind": info.kind}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e = html.escape
    body = [card_html(card)]
    for caption, b64 in _plots(card):
        body.append(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{e(caption)}</figcaption></figure>")
    for folder in figures:
        folder = Path(folder)
        if not folder.exists():
            raise CmrError(f"--figures {folder} does not exist; give the --out folder of an evaluation.")
        for png in sorted(folder.glob(f"{info.name}_*.png")):
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            body.append(f"<figure><img src='data:image/png;base64,{b64}' style='max-width:100%'><figcaption>{e(png.name)}</figcaption></figure>")
    body.append(f"<h4>Methods</h4><p>{e(METHODS)}</p>")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(info.name)} — evaluation</title>"
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td{vertical-align:top}figure{display:inline-block;margin:1em}</style>"
           f"</head><body>{''.join(body)}</body></html>\n")
    path = out / f"{info.name}_report.html"
    write_text_atomic(path, doc)
    return path
