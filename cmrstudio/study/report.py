"""The report of a reader study: one self-contained HTML page, the raw answers (CSV) and the scores (JSON).

Plots are drawn with matplotlib's Agg canvas directly (no pyplot, no GUI backend, safe beside Qt) and
embedded in the page as base64 PNG, so the page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from cmrstudio.errors import CmrError
from cmrstudio.io.common import jsonable, write_text_atomic
from cmrstudio.study.stats import MODES, Answer, answers_to_csv, is_machine

MODE_TITLES = {"single": "Single image: real or synthetic?", "2afc": "Two images side by side: which is real? (2AFC)"}


# ---------------------------------------------------------------------------------------- formatting


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def _ci(ci: list[float] | None, digits: int = 1) -> str:
    return "" if not ci else f" [{100 * ci[0]:.{digits}f}–{100 * ci[1]:.{digits}f}]"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _kappa_words(k: float | None) -> str:
    """Landis & Koch (1977) labels."""
    if k is None:
        return "undefined"
    for limit, word in ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if k <= limit:
            return word
    return "almost perfect"


def plain_line(score: dict | None, mode: str, alpha: float = 0.05) -> str:
    """One sentence for people, e.g. "Readers told synthetic from real in 58% of cases (95% CI 49–67%),
    not significantly better than chance (p=0.11)."""
    if not score:
        return "No human reader answered in this mode."
    acc, ci, p = score["accuracy"], score["accuracy_ci"], score["p_value"]
    if p < alpha and acc > 0.5:
        verdict = "significantly better than chance"
    elif p < alpha and acc < 0.5:
        verdict = "significantly worse than chance (a systematic confusion rather than guessing)"
    else:
        verdict = "not significantly better than chance"
    what = ("Readers told synthetic from real in {acc} of cases" if mode == "single"
            else "Shown a real and a synthetic image side by side, readers picked the real one in {acc} of pairs")
    p_text = f"p{_p(p)}" if _p(p).startswith("<") else f"p={_p(p)}"
    return (what.format(acc=_pct(acc, 0)) + f" ({_level(alpha)} CI {100 * ci[0]:.0f}–{100 * ci[1]:.0f}%), {verdict} "
            f"({p_text}; {score['n']} answers from {score['n_readers']} reader{'s' if score['n_readers'] != 1 else ''}).")


# ---------------------------------------------------------------------------------------- plots


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _rows(block: dict) -> list[tuple[str, str, dict]]:
    """(label, kind, score) for readers, pooled and machine rows of one mode."""
    rows = [(name, "reader", s) for name, s in block.get("readers", {}).items()]
    if block.get("pooled"):
        rows.append(("pooled (readers)", "pooled", block["pooled"]))
    rows += [(name, "machine", s) for name, s in block.get("machine", {}).items()]
    return rows


STYLE = {"reader": dict(color="#1f77b4", marker="o"), "pooled": dict(color="black", marker="D"),
         "machine": dict(color="#d95f02", marker="s")}


def forest_plot(scores: dict) -> str | None:
    """Per-reader accuracy with its interval, pooled and machine rows, and the chance line; base64 PNG."""
    from matplotlib.figure import Figure

    modes = [m for m in MODES if m in scores and _rows(scores[m])]
    if not modes:
        return None
    counts = [len(_rows(scores[m])) for m in modes]
    fig = Figure(figsize=(7.0, 1.2 + 0.38 * sum(counts) + 0.6 * len(modes)))
    axes = fig.subplots(len(modes), 1, squeeze=False, gridspec_kw={"height_ratios": [c + 1 for c in counts]})[:, 0]
    for ax, mode in zip(axes, modes):
        rows = _rows(scores[mode])
        for y, (label, kind, s) in enumerate(rows):
            lo, hi = s["accuracy_ci"]
            ax.errorbar([s["accuracy"]], [y], xerr=[[s["accuracy"] - lo], [hi - s["accuracy"]]], capsize=3,
                        linestyle="none", markersize=6, **STYLE[kind])
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.text(0.5, -0.9, " chance", color="grey", fontsize=8, va="center")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.set_ylim(len(rows) - 0.5, -1.3)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"accuracy ({_level(scores.get('alpha', 0.05))} Clopper–Pearson CI)")
        ax.set_title(MODE_TITLES[mode], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def roc_plot(scores: dict) -> str | None:
    """One empirical ROC curve per reader (single mode, confidence-rated), with the diagonal; base64 PNG."""
    from matplotlib.figure import Figure

    block = scores.get("single")
    if not block:
        return None
    curves = [(label, kind, s) for label, kind, s in _rows(block) if s.get("roc")]
    if not curves:
        return None
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    for label, kind, s in curves:
        style = {"pooled": dict(color="black", linewidth=2.2), "machine": dict(linestyle="-.")}.get(kind, {})
        ax.plot(s["roc"]["fpr"], s["roc"]["tpr"], marker=".", label=f"{label} (AUC {s['auc']:.2f})", **style)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (real called synthetic)")
    ax.set_ylabel("true-positive rate (synthetic called synthetic)")
    ax.set_title("ROC of 'synthetic' from confidence ratings", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
tr.pooled td{font-weight:bold;background:#fafafa} tr.machine td{color:#a04000}
p.lead{font-size:1.1em;background:#eef5ff;padding:.6em .8em;border-left:4px solid #1f77b4}
.note{color:#666;font-size:.9em} img{max-width:100%}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _info_table(info: dict) -> str:
    rows = []
    for k, v in info.items():
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v) or "—"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "—"
        rows.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _default_info(answers: list[Answer]) -> dict:
    info: dict = {}
    for mode in MODES:
        items = {a.item for a in answers if a.mode == mode}
        if items:
            info["items" if mode == "single" else "pairs (2AFC)"] = len(items)
    info["readers"] = sorted({a.reader for a in answers if not is_machine(a.reader)})
    machines = sorted({a.reader for a in answers if is_machine(a.reader)})
    if machines:
        info["machine readers"] = machines
    info["answers"] = len(answers)
    return info


def _score_table(block: dict, mode: str, alpha: float) -> str:
    lvl = _level(alpha)
    head = ["Reader", "n", f"Accuracy [{lvl} CI]", "p vs chance"]
    if mode == "single":
        head += [f"Sensitivity [{lvl} CI]", f"Specificity [{lvl} CI]", f"AUC [{lvl} CI]"]
    head += ["Mean time", "Median time"]
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for label, kind, s in _rows(block):
        cells = [label, s["n"], _pct(s["accuracy"]) + _ci(s["accuracy_ci"]), _p(s["p_value"])]
        if mode == "single":
            auc = "—" if s["auc"] is None else _num(s["auc"]) + (
                f" [{s['auc_ci'][0]:.3f}–{s['auc_ci'][1]:.3f}]" if s.get("auc_ci") else "")
            cells += [_pct(s["sensitivity"]) + _ci(s["sensitivity_ci"]),
                      _pct(s["specificity"]) + _ci(s["specificity_ci"]), auc]
        cells += [f"{s['mean_seconds']:.1f} s", f"{s['median_seconds']:.1f} s"]
        cls = f' class="{kind}"' if kind != "reader" else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _agreement_html(agree: dict | None, mode: str) -> str:
    if not agree:
        return ""
    k = agree.get("fleiss_kappa")
    readers = agree.get("readers", [])
    if k is None:
        why = ("fewer than two human readers" if len(readers) < 2 else
               "no item answered by every reader" if not agree.get("n_items") else
               "every rating fell in one category")
        fleiss = f"<p>Fleiss' kappa: not defined ({_e(why)}).</p>"
    else:
        fleiss = (f"<p>Fleiss' kappa <b>{k:.3f}</b> ({_kappa_words(k)} agreement) over {agree['n_items']} "
                  f"{'items' if mode == 'single' else 'pairs'} answered by all {len(readers)} readers.</p>")
    rows = "".join(f"<tr><td>{_e(c['a'])}</td><td>{_e(c['b'])}</td><td>{_num(c['kappa'])}</td><td>{c['n']}</td></tr>"
                   for c in agree.get("cohen", []))
    cohen = ("<table><tr><th>Reader A</th><th>Reader B</th><th>Cohen's kappa</th><th>common items</th></tr>"
             + rows + "</table>") if rows else ""
    return "<h3>Agreement between readers</h3>" + fleiss + cohen + \
        '<p class="note">Machine readers are left out of the agreement and of the pooled row.</p>'


def _img(b64: str | None, alt: str) -> str:
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{b64}"></p>' if b64 else ""


METHODS = """<h2>Methods</h2><p class="note">Accuracy, sensitivity (synthetic images called synthetic) and specificity
(real images called real) with Clopper–Pearson exact intervals; p: two-sided exact binomial test against 0.5.
AUC of 'synthetic' from the confidence ratings on a 10-point scale (+confidence for a 'synthetic' answer,
−confidence for 'real'), computed as the Mann–Whitney U statistic over all (synthetic, real) pairs (ties count
one half), with DeLong's standard error and a normal interval. Agreement: Fleiss' kappa over the items every human
reader answered, Cohen's kappa for each pair of readers over their common items. The pooled row treats every
answer as independent although answers cluster by reader and item: read it as descriptive, and the per-reader
rows as the tests.</p>"""


def render_html(scores: dict, answers: list[Answer], title: str, study_info: dict | None = None) -> str:
    alpha = float(scores.get("alpha", 0.05))
    info = dict(study_info) if study_info else _default_info(answers)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{_e(title)}</h1>",
             "<h2>Study</h2>", _info_table(info)]
    for mode in MODES:
        if mode in scores:
            parts.append(f'<p class="lead">{_e(plain_line(scores[mode].get("pooled"), mode, alpha))}</p>')
    for mode in MODES:
        if mode not in scores:
            continue
        parts += [f"<h2>{_e(MODE_TITLES[mode])}</h2>", _score_table(scores[mode], mode, alpha),
                  _agreement_html(scores.get("agreement", {}).get(mode), mode)]
    parts += ["<h2>Accuracy per reader</h2>", _img(forest_plot(scores), "accuracy per reader with confidence intervals")]
    if "single" in scores:
        roc = roc_plot(scores)
        parts += ["<h2>ROC from confidence ratings</h2>",
                  _img(roc, "ROC curves per reader") if roc else
                  '<p class="note">No ROC: no reader gave confidence ratings for both real and synthetic images.</p>']
    parts += [METHODS, "</body></html>"]
    return "\n".join(p for p in parts if p)


def write_report(scores: dict, answers: list[Answer], out_dir: str | os.PathLike, title: str,
                 study_info: dict | None = None) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``answers.csv`` and ``scores.json`` into ``out_dir``, each atomically.

    ``scores`` is what :func:`cmrstudio.study.stats.score_study` returned for ``answers``. Returns the paths
    as ``{"html": ..., "csv": ..., "json": ...}``.
    """
    if not isinstance(scores, dict) or not any(m in scores for m in MODES):
        raise CmrError("The scores given to write_report hold no mode; pass what score_study returned for these answers.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CmrError(f"{out_dir} is a file, not a folder; choose a folder for the report.")
    text = render_html(scores, answers, title, study_info)
    paths = {"csv": out_dir / "answers.csv", "json": out_dir / "scores.json", "html": out_dir / "report.html"}
    answers_to_csv(answers, paths["csv"])
    write_text_atomic(paths["json"], json.dumps(jsonable(scores), indent=2, allow_nan=False) + "\n")
    write_text_atomic(paths["html"], text)
    return paths


def report_study(study: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Score every reader of a study and all pooled, and write its report (:func:`write_report`) into ``out``
    (default: STUDY/report). Returns the paths as ``{"html": ..., "csv": ..., "json": ...}``."""
    from cmrstudio.study.design import load_study
    from cmrstudio.study.stats import score_study
    from cmrstudio.study.store import Store, to_answers

    st = load_study(study)
    store = Store(st)
    try:
        answers = to_answers(st, store.rows())
    finally:
        store.close()
    if not answers:
        raise CmrError(f"{study} has no answers yet; readers answer with `cmrstudio study read {study} --reader NAME`.")
    scores = score_study(answers)
    return write_report(scores, answers, out or (st.folder / "report"), title=f"Reader study: {st.name}",
                        study_info={"items": len(st.items), "pairs": len(st.pairs), "seed": st.seed, "mode": st.mode,
                                    "readers": sorted({a.reader for a in answers})})
