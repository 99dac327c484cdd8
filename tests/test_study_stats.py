"""Reader-study statistics and report. Expected values are computed by hand in the comments, not by the code under test."""

import csv
import json
import math
import re

import pytest

from cmrstudio.errors import CmrError
from cmrstudio.study.report import plain_line, write_report
from cmrstudio.study.stats import Answer, answers_from_csv, answers_to_csv, score_reader, score_study


def single(reader, item, truth, answer, conf=3, seconds=4.0, **kw):
    return Answer(reader, item, "single", truth, answer, conf, seconds, **kw)


def afc(reader, item, truth, answer, conf=3, seconds=6.0):
    return Answer(reader, item, "2afc", truth, answer, conf, seconds)


def k_of_n(k, n, reader="r1"):
    """k correct out of n single-mode answers (alternating truths)."""
    out = []
    for i in range(n):
        truth = "synthetic" if i % 2 else "real"
        wrong = "real" if truth == "synthetic" else "synthetic"
        out.append(single(reader, f"i{i}", truth, truth if i < k else wrong, seconds=float(i + 1)))
    return out


# ------------------------------------------------------------------ accuracy, CI, p


def test_all_correct():
    s = score_reader(k_of_n(10, 10))
    assert (s["n"], s["correct"], s["accuracy"]) == (10, 10, 1.0)
    # Clopper–Pearson for k = n: lower = (alpha/2)^(1/n) = 0.025^0.1 = 0.69150, upper = 1
    assert s["accuracy_ci"][0] == pytest.approx(0.025 ** 0.1, abs=1e-9)
    assert s["accuracy_ci"][0] == pytest.approx(0.6915, abs=1e-4)
    assert s["accuracy_ci"][1] == 1.0
    # two-sided exact binomial: 2 * 0.5^10
    assert s["p_value"] == pytest.approx(2 / 1024)
    # seconds 1..10
    assert s["mean_seconds"] == pytest.approx(5.5)
    assert s["median_seconds"] == pytest.approx(5.5)


def test_all_wrong():
    s = score_reader(k_of_n(0, 10))
    assert s["accuracy"] == 0.0
    assert s["accuracy_ci"][0] == 0.0
    assert s["accuracy_ci"][1] == pytest.approx(1 - 0.025 ** 0.1, abs=1e-9)  # 0.3085
    assert s["accuracy_ci"][1] == pytest.approx(0.3085, abs=1e-4)
    assert s["p_value"] == pytest.approx(2 / 1024)


def test_seven_of_ten():
    s = score_reader(k_of_n(7, 10))
    assert s["accuracy"] == pytest.approx(0.7)
    # published Clopper–Pearson 95% interval for 7/10
    assert s["accuracy_ci"][0] == pytest.approx(0.3475, abs=1e-4)
    assert s["accuracy_ci"][1] == pytest.approx(0.9333, abs=1e-4)
    # 2 * P(X >= 7) = 2 * (C(10,7)+C(10,8)+C(10,9)+C(10,10)) / 2^10 = 2 * 176 / 1024
    assert s["p_value"] == pytest.approx(0.34375)


def test_alpha_changes_interval():
    s = score_reader(k_of_n(10, 10), alpha=0.10)
    assert s["accuracy_ci"][0] == pytest.approx(0.05 ** 0.1, abs=1e-9)  # 0.7411


# ------------------------------------------------------------------ sensitivity / specificity


def test_sensitivity_specificity_small_table():
    # 4 synthetic, all called synthetic; 2 real, one called real.
    a = [single("r", f"s{i}", "synthetic", "synthetic") for i in range(4)]
    a += [single("r", "r0", "real", "real"), single("r", "r1", "real", "synthetic")]
    s = score_reader(a)
    assert (s["n_synthetic"], s["n_real"]) == (4, 2)
    assert s["sensitivity"] == 1.0
    assert s["sensitivity_ci"][0] == pytest.approx(0.025 ** 0.25, abs=1e-9)  # 0.3976
    assert s["sensitivity_ci"][1] == 1.0
    assert s["specificity"] == 0.5
    # k=1, n=2: lower solves 1-(1-p)^2 = 0.025 -> 1-sqrt(0.975); upper solves p^2 = 0.975
    assert s["specificity_ci"][0] == pytest.approx(1 - math.sqrt(0.975), abs=1e-9)  # 0.01258
    assert s["specificity_ci"][1] == pytest.approx(math.sqrt(0.975), abs=1e-9)  # 0.98742
    assert s["accuracy"] == pytest.approx(5 / 6)


def test_sensitivity_specificity_counts():
    # 8 synthetic (6 called synthetic), 12 real (9 called real)
    a = [single("r", f"s{i}", "synthetic", "synthetic" if i < 6 else "real") for i in range(8)]
    a += [single("r", f"r{i}", "real", "real" if i < 9 else "synthetic") for i in range(12)]
    s = score_reader(a)
    assert s["sensitivity"] == pytest.approx(0.75)
    assert s["specificity"] == pytest.approx(0.75)
    assert s["correct"] == 15 and s["accuracy"] == pytest.approx(0.75)


# ------------------------------------------------------------------ ROC AUC


def test_auc_by_concordant_pairs():
    # scores (+conf if answered synthetic, -conf if real):
    #   synthetic truth: 5, 2, -1      real truth: -4, 2, -1
    # pairs: 5 beats all three (3); 2 beats -4 and -1, ties 2 (2.5); -1 beats -4, ties -1 (1.5) -> 7 / 9
    a = [single("r", "s1", "synthetic", "synthetic", 5), single("r", "s2", "synthetic", "synthetic", 2),
         single("r", "s3", "synthetic", "real", 1), single("r", "n1", "real", "real", 4),
         single("r", "n2", "real", "synthetic", 2), single("r", "n3", "real", "real", 1)]
    s = score_reader(a)
    assert s["auc"] == pytest.approx(7 / 9)
    assert s["auc_n"] == 6
    # DeLong: placements V10 = {1, 5/6, 1/2}, V01 = {1, 1/2, 5/6}; each sample variance 7/108
    # var = 7/108/3 + 7/108/3 = 7/162
    assert s["auc_se"] == pytest.approx(math.sqrt(7 / 162))
    lo, hi = s["auc_ci"]
    assert lo == pytest.approx(7 / 9 - 1.959964 * math.sqrt(7 / 162), abs=1e-5) and hi == 1.0  # clipped
    # ROC passes through (0,0) and (1,1); at threshold 5 one synthetic and no real is above
    assert s["roc"]["fpr"][0] == 0 and s["roc"]["tpr"][-1] == 1 and s["roc"]["fpr"][-1] == 1
    assert (s["roc"]["fpr"][1], s["roc"]["tpr"][1]) == (0.0, pytest.approx(1 / 3))


def test_auc_perfect_and_missing_confidence():
    a = [single("r", "s1", "synthetic", "synthetic", 4), single("r", "s2", "synthetic", "synthetic", None),
         single("r", "n1", "real", "real", 2)]
    s = score_reader(a)
    assert s["auc"] == 1.0 and s["auc_n"] == 2  # the unrated answer is left out of the AUC only
    assert s["auc_se"] is None  # DeLong needs two of each class
    assert s["n"] == 3


def test_auc_none_when_a_class_is_absent():
    a = [single("r", f"s{i}", "synthetic", "synthetic" if i else "real", 3) for i in range(4)]
    s = score_reader(a)
    assert s["auc"] is None and s["roc"] is None
    assert s["specificity"] is None and s["specificity_ci"] is None
    assert s["sensitivity"] == 0.75


def test_2afc_has_no_sensitivity_or_auc():
    a = [afc("r", f"p{i}", "left" if i % 2 else "right", "left") for i in range(8)]  # 4 correct
    s = score_reader(a)
    assert s["mode"] == "2afc" and s["accuracy"] == 0.5 and s["p_value"] == pytest.approx(1.0)
    assert s["sensitivity"] is None and s["specificity"] is None and s["auc"] is None


# ------------------------------------------------------------------ agreement


def fleiss_study():
    # 3 readers, 5 items all rated by everyone; item 6 only by r1 and r2 (not in Fleiss).
    # counts (synthetic, real): i1 (3,0) i2 (2,1) i3 (2,1) i4 (0,3) i5 (1,2)
    votes = {"i1": "SSS", "i2": "SSR", "i3": "RSS", "i4": "RRR", "i5": "RSR"}
    a = []
    for item, v in votes.items():
        for reader, c in zip(("r1", "r2", "r3"), v):
            a.append(single(reader, item, "synthetic", "synthetic" if c == "S" else "real"))
    a += [single("r1", "i6", "real", "real"), single("r2", "i6", "real", "synthetic")]
    return a


def test_fleiss_kappa_by_hand():
    agree = score_study(fleiss_study())["agreement"]["single"]
    # P_i = (sum n_ij^2 - 3) / 6: 1, 1/3, 1/3, 1, 1/3 -> P-bar = 3/5
    # p_syn = 8/15, p_real = 7/15 -> P_e = (64 + 49) / 225 = 113/225
    # kappa = (3/5 - 113/225) / (1 - 113/225) = 22/112 = 11/56
    assert agree["fleiss_kappa"] == pytest.approx(11 / 56)
    assert agree["n_items"] == 5
    assert agree["readers"] == ["r1", "r2", "r3"]
    assert [(c["a"], c["b"]) for c in agree["cohen"]] == [("r1", "r2"), ("r1", "r3"), ("r2", "r3")]
    assert [c["n"] for c in agree["cohen"]] == [6, 5, 5]


def two_raters():
    # a\b      syn  real
    # syn       4    1
    # real      2    3
    pattern = ["SS"] * 4 + ["SR"] + ["RS"] * 2 + ["RR"] * 3
    a = []
    for i, (x, y) in enumerate(pattern):
        a.append(single("ann", f"i{i}", "real", "synthetic" if x == "S" else "real"))
        a.append(single("bob", f"i{i}", "real", "synthetic" if y == "S" else "real"))
    return a


def test_cohen_kappa_by_hand():
    agree = score_study(two_raters())["agreement"]["single"]
    # p_o = 7/10; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7-0.5)/0.5 = 0.4
    assert agree["cohen"] == [{"a": "ann", "b": "bob", "kappa": pytest.approx(0.4), "n": 10}]
    # Fleiss with two raters (Scott's pi): P-bar = 0.7, p_syn = 11/20 -> P_e = 0.3025 + 0.2025 = 0.505
    assert agree["fleiss_kappa"] == pytest.approx((0.7 - 0.505) / 0.495)


def test_one_reader_has_no_fleiss():
    scores = score_study(k_of_n(7, 10))
    assert scores["agreement"]["single"]["fleiss_kappa"] is None
    assert scores["agreement"]["single"]["cohen"] == []


def test_unanimous_in_one_category_gives_none():
    a = [single(r, f"i{i}", "real", "real") for r in ("a", "b") for i in range(3)]
    agree = score_study(a)["agreement"]["single"]
    assert agree["fleiss_kappa"] is None and agree["cohen"][0]["kappa"] is None


def test_2afc_agreement_left_right():
    # x\y   left right
    # left   2    0
    # right  1    1      p_o = 3/4, p_e = 0.5*0.75 + 0.5*0.25 = 0.5, kappa = 0.5
    pattern = ["LL", "LL", "RL", "RR"]
    a = []
    for i, (x, y) in enumerate(pattern):
        a.append(afc("x", f"p{i}", "left", "left" if x == "L" else "right"))
        a.append(afc("y", f"p{i}", "left", "left" if y == "L" else "right"))
    scores = score_study(a)
    assert "single" not in scores and set(scores["agreement"]) == {"2afc"}
    assert scores["agreement"]["2afc"]["cohen"][0]["kappa"] == pytest.approx(0.5)


def test_machine_reader_kept_apart():
    a = two_raters() + [single("machine (classifier)", f"i{i}", "real", "synthetic") for i in range(10)]
    scores = score_study(a)
    block = scores["single"]
    assert set(block["readers"]) == {"ann", "bob"}
    assert set(block["machine"]) == {"machine (classifier)"}
    assert block["machine"]["machine (classifier)"]["accuracy"] == 0.0
    assert block["pooled"]["n"] == 20 and block["pooled"]["n_readers"] == 2
    # truth is "real" everywhere: ann calls 5 real, bob 4 -> 9/20
    assert block["pooled"]["accuracy"] == pytest.approx(9 / 20)
    assert scores["agreement"]["single"]["readers"] == ["ann", "bob"]
    assert scores["agreement"]["single"]["cohen"][0]["kappa"] == pytest.approx(0.4)


def test_score_study_both_modes():
    scores = score_study(k_of_n(7, 10) + [afc("r1", "p1", "left", "left"), afc("r1", "p2", "right", "left")])
    assert scores["single"]["pooled"]["accuracy"] == pytest.approx(0.7)
    assert scores["2afc"]["readers"]["r1"]["accuracy"] == 0.5
    assert scores["n_answers"] == 12


# ------------------------------------------------------------------ errors


def test_empty_answers():
    with pytest.raises(CmrError, match="no answers"):
        score_reader([])
    with pytest.raises(CmrError, match="no answers"):
        score_study([])


def test_unknown_vocabulary_names_the_value():
    a = k_of_n(3, 4) + [single("r1", "x", "real", "maybe")]
    with pytest.raises(CmrError) as exc:
        score_study(a)
    assert "'maybe'" in str(exc.value) and "'real' or 'synthetic'" in str(exc.value) and "'x'" in str(exc.value)
    with pytest.raises(CmrError, match="'up'"):
        score_reader([afc("r", "p", "up", "left")])
    with pytest.raises(CmrError, match="'both'"):
        score_reader([Answer("r", "i", "both", "real", "real", 3, 1.0)])


def test_other_bad_inputs():
    with pytest.raises(CmrError, match="confidence 7"):
        score_reader([single("r", "i", "real", "real", 7)])
    with pytest.raises(CmrError, match="more than once"):
        score_reader([single("r", "i", "real", "real"), single("r", "i", "real", "synthetic")])
    with pytest.raises(CmrError, match="mix the modes"):
        score_reader([single("r", "i", "real", "real"), afc("r", "p", "left", "left")])
    with pytest.raises(CmrError, match="-2"):
        score_reader([single("r", "i", "real", "real", seconds=-2.0)])
    with pytest.raises(CmrError, match="alpha"):
        score_reader(k_of_n(1, 2), alpha=1.5)


# ------------------------------------------------------------------ CSV and report


def test_csv_round_trip(tmp_path):
    a = fleiss_study() + [single("r9", "v", "real", "real", None, 2.5, vendor="siemens", phase="ED"),
                          afc("r9", "p1", "right", "left", 5, 7.25)]
    path = answers_to_csv(a, tmp_path / "sub" / "answers.csv")
    assert path == tmp_path / "sub" / "answers.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(a)
    assert list(rows[0]) == ["reader", "item", "mode", "truth", "answer", "confidence", "seconds", "vendor", "phase"]
    assert rows[-2] == {"reader": "r9", "item": "v", "mode": "single", "truth": "real", "answer": "real",
                        "confidence": "", "seconds": "2.5", "vendor": "siemens", "phase": "ED"}
    assert rows[-1]["mode"] == "2afc" and rows[-1]["confidence"] == "5" and float(rows[-1]["seconds"]) == 7.25
    assert answers_from_csv(path) == a
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp.csv")]


def test_plain_line():
    s = score_reader(k_of_n(7, 10))
    # 70% (CI 35–93%), p = 0.34375 -> "0.34"
    line = plain_line(s, "single")
    assert line.startswith("Readers told synthetic from real in 70% of cases (95% CI 35–93%), "
                           "not significantly better than chance (p=0.34")
    assert "significantly better than chance (p=0.002" in plain_line(score_reader(k_of_n(10, 10)), "single")
    assert "significantly worse than chance" in plain_line(score_reader(k_of_n(0, 10)), "single")


def test_write_report(tmp_path):
    a = fleiss_study() + [single("machine (classifier)", f"i{i}", "synthetic", "synthetic", 5) for i in range(1, 6)]
    a += [afc("r1", "p1", "left", "left"), afc("r2", "p1", "left", "right")]
    scores = score_study(a)
    paths = write_report(scores, a, tmp_path / "report", "Realism test <A>", {"items": 6, "readers": ["r1", "r2", "r3"], "seed": 7})
    assert set(paths) == {"html", "csv", "json"}
    assert paths["html"] == tmp_path / "report" / "report.html"
    text = paths["html"].read_text(encoding="utf-8")
    assert "Realism test &lt;A&gt;" in text and "<A>" not in text
    # two embedded plots: the forest plot and the ROC
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 2 and all(len(b) > 1000 for b in imgs)
    assert "http" not in text.split("<body>")[1]  # self-contained
    # r1 answered i1..i5 synthetic,synthetic,real,real,real (truth synthetic) + i6 real (truth real): 3/6 correct
    assert "50.0% [11.8–88.2]" in text  # Clopper–Pearson 3/6 = 0.1181–0.8819
    # pooled: 8 synthetic votes of 15 on synthetic items + r1 right on i6, r2 wrong -> 9/17
    assert scores["single"]["pooled"]["correct"] == 9
    assert "52.9%" in text
    assert "machine (classifier)" in text and "100.0% [47.8–100.0]" in text  # 5/5: 0.025^(1/5) = 0.4782
    assert "0.196" in text  # Fleiss 11/56
    assert "seed" in text and ">7<" in text
    assert "Readers told synthetic from real in 53% of cases" in text
    assert "which is real" in text.lower()
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["agreement"]["single"]["fleiss_kappa"] == pytest.approx(11 / 56)
    with open(paths["csv"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(a)


def test_write_report_2afc_only_has_one_plot(tmp_path):
    a = [afc("r1", f"p{i}", "left", "left" if i < 3 else "right") for i in range(4)]
    paths = write_report(score_study(a), a, tmp_path, "2AFC")
    text = paths["html"].read_text(encoding="utf-8")
    assert text.count("<img ") == 1 and "75.0% [19.4–99.4]" in text  # 3/4


def test_write_report_refuses_empty_scores(tmp_path):
    with pytest.raises(CmrError, match="score_study"):
        write_report({}, [], tmp_path, "x")
