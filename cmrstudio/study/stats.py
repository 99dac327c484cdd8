"""Scoring a blinded reader study: accuracy, sensitivity/specificity, ROC AUC and agreement.

Two kinds of task:

- ``single``: one image, "real or synthetic?". ``truth`` and ``answer`` are ``"real"`` or
  ``"synthetic"``. "Synthetic" is the positive class: sensitivity is synthetic images called
  synthetic over all synthetic images, specificity real images called real over all real ones.
- ``2afc``: two images side by side, "which is real?". ``truth`` and ``answer`` are ``"left"``
  or ``"right"`` (the side that is real). Chance is 0.5 here too.

Statistics (all from scipy/statsmodels where they exist):

- proportions (accuracy, sensitivity, specificity) with Clopper–Pearson exact intervals,
  ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``;
- accuracy against chance with the two-sided exact binomial test, ``scipy.stats.binomtest(k, n, 0.5)``;
- ROC AUC of "synthetic" (single mode) from the confidence ratings, scored on a 10-point scale
  ``+confidence`` when the answer is "synthetic" and ``-confidence`` when it is "real" (-5..-1, 1..5).
  The AUC is the Mann–Whitney U statistic of the synthetic scores against the real ones divided by
  ``n_synthetic * n_real`` (``scipy.stats.mannwhitneyu``; ties count one half), i.e. the share of
  (synthetic, real) pairs the reader ranks the right way round. Its standard error is DeLong's
  (placement values, 1988), its interval the normal approximation clipped to [0, 1]. Answers without
  a confidence are left out of the AUC only (``auc_n`` says how many were used);
- agreement: Fleiss' kappa over the items every human reader answered
  (``statsmodels.stats.inter_rater.aggregate_raters`` + ``fleiss_kappa``), and Cohen's kappa for every
  pair of human readers over the items both answered (``statsmodels.stats.inter_rater.cohens_kappa``).

Pooled scores treat every answer as independent, which they are not (answers cluster by reader and
by item): read the pooled interval and p-value as descriptive, and the per-reader ones as the test.

Readers whose name starts with "machine" (e.g. ``"machine (classifier)"``) are scored like the
others, but are listed under ``"machine"`` and kept out of the pooled score and the agreement.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import statistics
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from cmrstudio.errors import CmrError
from cmrstudio.io.common import atomic_path

VOCAB = {"single": ("real", "synthetic"), "2afc": ("left", "right")}
MODES = tuple(VOCAB)
CONFIDENCE = range(1, 6)


@dataclass
class Answer:
    reader: str
    item: str  # item id (single mode) or pair id (2afc)
    mode: str  # "single" or "2afc"
    truth: str  # single: "real" | "synthetic"; 2afc: "left" | "right" (the side that is real)
    answer: str  # same vocabulary as truth
    confidence: int | None  # 1–5, how sure the reader is of the answer given
    seconds: float  # reading time
    vendor: str | None = None
    phase: str | None = None


def is_machine(reader: str) -> bool:
    """A machine reader (a classifier run as a reader): scored, but kept out of pooling and agreement."""
    return str(reader).strip().lower().startswith("machine")


# ---------------------------------------------------------------------------------------- checks


def _where(a: Answer) -> str:
    return f"reader {a.reader!r} on {a.mode} item {a.item!r}"


def _check_alpha(alpha: float) -> float:
    try:
        ok = 0.0 < float(alpha) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CmrError(f"alpha {alpha!r} must be a number between 0 and 1 (0.05 gives 95% confidence intervals).")
    return float(alpha)


def _check(answers: list[Answer]) -> list[Answer]:
    """Every answer well formed, one answer per reader, mode and item; else one sentence naming the value."""
    answers = list(answers)
    if not answers:
        raise CmrError("There are no answers to score; let at least one reader answer the study first.")
    seen: set[tuple[str, str, str]] = set()
    for a in answers:
        if not isinstance(a, Answer):
            raise CmrError(f"{a!r} is not a reader-study Answer; build answers with cmrstudio.study.stats.Answer.")
        if a.mode not in VOCAB:
            raise CmrError(f"Mode {a.mode!r} of reader {a.reader!r} on item {a.item!r} is not known; "
                           f"use {' or '.join(repr(m) for m in MODES)}.")
        words = VOCAB[a.mode]
        for what, value in (("truth", a.truth), ("answer", a.answer)):
            if value not in words:
                raise CmrError(f"The {what} {value!r} of {_where(a)} is not a {a.mode} value; "
                               f"use {' or '.join(repr(w) for w in words)}.")
        c = a.confidence
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, np.integer)) or int(c) not in CONFIDENCE):
            raise CmrError(f"The confidence {c!r} of {_where(a)} is not a whole number from 1 to 5; "
                           "give 1 (unsure) to 5 (certain), or leave it empty.")
        try:
            s = float(a.seconds)
        except (TypeError, ValueError):
            s = math.nan
        if not (math.isfinite(s) and s >= 0):
            raise CmrError(f"The reading time {a.seconds!r} s of {_where(a)} is not a number of seconds ≥ 0; "
                           "correct or remove that answer.")
        key = (str(a.reader), a.mode, str(a.item))
        if key in seen:
            raise CmrError(f"Reader {a.reader!r} answered {a.mode} item {a.item!r} more than once; "
                           "keep one answer per reader and item.")
        seen.add(key)
    return answers


# ---------------------------------------------------------------------------------------- numbers


def proportion(k: int, n: int, alpha: float = 0.05) -> tuple[float | None, list[float] | None]:
    """k/n with its Clopper–Pearson (exact) interval at confidence 1 - alpha; (None, None) if n is 0."""
    from scipy.stats import binomtest

    if n == 0:
        return None, None
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1.0 - alpha, method="exact")
    return k / n, [float(ci.low), float(ci.high)]


def chance_p(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of k successes in n trials against 0.5."""
    from scipy.stats import binomtest

    return float(binomtest(int(k), int(n), 0.5, alternative="two-sided").pvalue)


def confidence_score(a: Answer) -> int | None:
    """The 10-point rating of "synthetic": +confidence for a "synthetic" answer, -confidence for "real"."""
    if a.confidence is None:
        return None
    return int(a.confidence) if a.answer == "synthetic" else -int(a.confidence)


def auc(pos: list[float], neg: list[float], alpha: float = 0.05) -> dict:
    """ROC AUC of positives over negatives (Mann–Whitney U / (n_pos n_neg), ties one half),
    DeLong standard error (None with fewer than 2 of a class) and its normal interval clipped to [0, 1]."""
    from scipy.stats import mannwhitneyu, norm

    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return {"auc": None, "auc_se": None, "auc_ci": None}
    u = mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic  # U of `pos`
    value = float(u) / (len(pos) * len(neg))
    se = ci = None
    if len(pos) >= 2 and len(neg) >= 2:
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # DeLong placement values
        var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
        se = float(math.sqrt(var))
        z = float(norm.ppf(1.0 - alpha / 2.0))
        ci = [max(0.0, value - z * se), min(1.0, value + z * se)]
    return {"auc": value, "auc_se": se, "auc_ci": ci}


def roc_points(pos: list[float], neg: list[float]) -> dict | None:
    """The empirical ROC: (false-positive rate, true-positive rate) at every threshold, from (0, 0) to (1, 1)."""
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return None
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = [0.0] + [float((neg >= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((pos >= t).mean()) for t in thresholds]
    return {"fpr": fpr, "tpr": tpr}


# ---------------------------------------------------------------------------------------- scores


def score_reader(answers: list[Answer], alpha: float = 0.05) -> dict:
    """Scores of one reader's answers (or of several readers pooled), all of one mode.

    Keys: mode, n, n_readers, correct, accuracy, accuracy_ci, p_value (exact binomial vs 0.5, two-sided),
    sensitivity/sensitivity_ci/n_synthetic, specificity/specificity_ci/n_real, auc/auc_se/auc_ci/auc_n, roc
    (single mode; None in 2afc or when a class is absent), mean_seconds, median_seconds, alpha.
    Intervals are [low, high] lists.
    """
    alpha = _check_alpha(alpha)
    answers = _check(answers)
    modes = sorted({a.mode for a in answers})
    if len(modes) > 1:
        raise CmrError(f"These answers mix the modes {' and '.join(modes)}; score each mode on its own "
                       "(score_study does this).")
    mode = modes[0]
    n = len(answers)
    correct = sum(a.answer == a.truth for a in answers)
    accuracy, accuracy_ci = proportion(correct, n, alpha)
    seconds = [float(a.seconds) for a in answers]
    out = {
        "mode": mode,
        "n": n,
        "n_readers": len({a.reader for a in answers}),
        "correct": correct,
        "accuracy": accuracy,
        "accuracy_ci": accuracy_ci,
        "p_value": chance_p(correct, n),
        "sensitivity": None, "sensitivity_ci": None, "n_synthetic": None,
        "specificity": None, "specificity_ci": None, "n_real": None,
        "auc": None, "auc_se": None, "auc_ci": None, "auc_n": 0, "roc": None,
        "mean_seconds": statistics.fmean(seconds),
        "median_seconds": float(statistics.median(seconds)),
        "alpha": alpha,
    }
    if mode == "single":
        syn = [a for a in answers if a.truth == "synthetic"]
        real = [a for a in answers if a.truth == "real"]
        out["n_synthetic"], out["n_real"] = len(syn), len(real)
        out["sensitivity"], out["sensitivity_ci"] = proportion(sum(a.answer == "synthetic" for a in syn), len(syn), alpha)
        out["specificity"], out["specificity_ci"] = proportion(sum(a.answer == "real" for a in real), len(real), alpha)
        pos = [s for s in map(confidence_score, syn) if s is not None]
        neg = [s for s in map(confidence_score, real) if s is not None]
        out.update(auc(pos, neg, alpha))
        if out["auc"] is not None:
            out["auc_n"] = len(pos) + len(neg)
            out["roc"] = roc_points(pos, neg)
    return out


def _kappa(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # 0/0 when every rating falls in one category


def agreement(answers: list[Answer], mode: str) -> dict:
    """Fleiss' kappa over the items every human reader of ``mode`` answered, and Cohen's kappa per reader pair.

    Categories are the mode's vocabulary (real/synthetic or left/right). Fleiss' kappa is None with fewer
    than two readers, no common item, or when it is undefined (every rating in one category); likewise
    each Cohen's kappa.
    """
    from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, fleiss_kappa

    words = VOCAB[mode]
    code = {w: i for i, w in enumerate(words)}
    by_reader: dict[str, dict[str, int]] = {}
    for a in answers:
        if a.mode == mode and not is_machine(a.reader):
            by_reader.setdefault(str(a.reader), {})[str(a.item)] = code[a.answer]
    readers = sorted(by_reader)
    common = sorted(set.intersection(*(set(v) for v in by_reader.values()))) if readers else []
    fleiss = None
    if len(readers) >= 2 and common:
        data = np.array([[by_reader[r][i] for r in readers] for i in common])
        table, _ = aggregate_raters(data, n_cat=len(words))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fleiss = _kappa(fleiss_kappa(table, method="fleiss"))
    pairs = []
    for r1, r2 in itertools.combinations(readers, 2):
        both = sorted(set(by_reader[r1]) & set(by_reader[r2]))
        kappa = None
        if both:
            table = np.zeros((len(words), len(words)))
            for i in both:
                table[by_reader[r1][i], by_reader[r2][i]] += 1
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                kappa = _kappa(cohens_kappa(table, return_results=False))
        pairs.append({"a": r1, "b": r2, "kappa": kappa, "n": len(both)})
    return {"fleiss_kappa": fleiss, "n_items": len(common) if len(readers) >= 2 else 0,
            "readers": readers, "cohen": pairs}


def score_study(answers: list[Answer], alpha: float = 0.05) -> dict:
    """Scores of a whole study, per mode present.

    ``{mode: {"readers": {name: score}, "machine": {name: score}, "pooled": score | None}, ...,
    "agreement": {mode: {"fleiss_kappa", "n_items", "readers", "cohen": [{"a", "b", "kappa", "n"}]}},
    "alpha": alpha, "n_answers": n}``; ``pooled`` pools the human readers only (None if there are none).
    """
    alpha = _check_alpha(alpha)
    answers = _check(answers)
    out: dict = {}
    agree: dict = {}
    for mode in MODES:
        mine = [a for a in answers if a.mode == mode]
        if not mine:
            continue
        names = sorted({str(a.reader) for a in mine})
        humans = [a for a in mine if not is_machine(a.reader)]
        out[mode] = {
            "readers": {r: score_reader([a for a in mine if str(a.reader) == r], alpha) for r in names if not is_machine(r)},
            "machine": {r: score_reader([a for a in mine if str(a.reader) == r], alpha) for r in names if is_machine(r)},
            "pooled": score_reader(humans, alpha) if humans else None,
        }
        agree[mode] = agreement(mine, mode)
    out["agreement"] = agree
    out["alpha"] = alpha
    out["n_answers"] = len(answers)
    return out


# ---------------------------------------------------------------------------------------- CSV

CSV_FIELDS = [f.name for f in fields(Answer)]


def answers_to_csv(answers: list[Answer], path: str | os.PathLike) -> Path:
    """The raw answers, one row each (header = the Answer fields; empty cell for None), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            for a in answers:
                w.writerow({k: ("" if v is None else v) for k, v in asdict(a).items()})
    return path


def answers_from_csv(path: str | os.PathLike) -> list[Answer]:
    """Read back a file written by :func:`answers_to_csv` (checked as for scoring)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CmrError(f"Cannot read the answers file {path} ({exc.strerror}); check the path.") from exc
    out = []
    for line, r in enumerate(rows, start=2):
        missing = [f for f in CSV_FIELDS[:7] if f not in r]
        if missing:
            raise CmrError(f"{path} lacks the column(s) {', '.join(missing)}; write it with answers_to_csv.")
        try:
            conf = int(r["confidence"]) if r["confidence"] not in ("", None) else None
            seconds = float(r["seconds"])
        except ValueError:
            raise CmrError(f"Line {line} of {path} has confidence {r['confidence']!r} / seconds {r['seconds']!r}, "
                           "which are not numbers; correct that line.") from None
        out.append(Answer(r["reader"], r["item"], r["mode"], r["truth"], r["answer"], conf, seconds,
                          r.get("vendor") or None, r.get("phase") or None))
    return _check(out) if out else out
