"""Utility and the segmenter's own figures: Dice/HD95 with known answers, patient-level splits, the three
training arms at several fractions scored on held-out patients with a paired test, and `evaluate utility`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrstudio.errors import CmrError
from tests.helpers import cli, copy_model, run


def test_dice_and_hd95_know_identity_and_a_known_shift():
    from cmrstudio.metrics import case_scores

    ref = np.zeros((2, 40, 40), np.uint8)
    ref[:, 10:20, 10:20] = 1
    ref[:, 25:30, 25:35] = 3
    same = case_scores(ref, ref, spacing_mm=2.0)
    assert same["LV"] == {"dice": 1.0, "hd95_mm": 0.0, "missed_slices": 0} and "MYO" not in same
    shifted = np.zeros_like(ref)
    shifted[:, 13:23, 10:20] = 1  # the LV moved 3 pixels = 6 mm; the RV is missed in both slices
    s = case_scores(shifted, ref, spacing_mm=2.0)
    assert s["LV"]["dice"] == pytest.approx(2 * 70 / 200) and s["LV"]["hd95_mm"] == pytest.approx(6.0)
    assert s["RV"] == {"dice": 0.0, "hd95_mm": None, "missed_slices": 2}


def _phantom_data(folder, n_train=6, n_test=2):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case

    for i in range(n_train):
        write_case(phantom_case(seed=300 + i, vendor="siemens", n_slices=4), folder)
    for i in range(n_test):
        c = phantom_case(seed=400 + i, vendor="siemens", n_slices=4)
        c.case_id = f"heldout{i}_ED"
        write_case(c, folder)
    return folder


def test_utility_trains_three_arms_per_fraction_on_patient_level_splits(tiny_run, tmp_path):
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.evaluate.utility import evaluate_utility, utility_figure

    data = _phantom_data(tmp_path / "data")
    seen = []
    res = evaluate_utility(cases_from([data]), ["heldout"], model=str(tiny_run.out / "tiny.json"), fractions=(0.5, 1.0), seeds=1,
                           steps=60, base=8, batch=8, progress=lambda i, n, m: seen.append((i, n)))
    assert seen[-1] == (6, 6) and res.train_patients == 6 and res.test_cases == ["heldout0_ED", "heldout1_ED"]
    by = {(r["fraction"], r["arm"]): r for r in res.rows}
    assert by[(0.5, "real")]["patients"] == 3 and by[(1.0, "real")]["patients"] == 6  # fractions of patients, not slices
    for f in (0.5, 1.0):
        n = by[(f, "real")]["slices"]
        assert by[(f, "synthetic")]["slices"] == n and by[(f, "real+synthetic")]["slices"] == 2 * n
    # trained on all real phantom patients, it segments new ones (the phantom is easy); every figure is a real number
    assert by[(1.0, "real")]["LV_dice"] > 0.6
    for r in res.rows:
        assert 0 <= r["mean_dice"] <= 1 and (r["mean_hd95_mm"] is None or r["mean_hd95_mm"] >= 0)
    assert len(res.tests) == 4
    for t in res.tests:
        assert t["versus"] == "real" and t["wins"] + t["losses"] <= t["cases"] == 2
        assert t["wilcoxon_p"] is None or 0 < t["wilcoxon_p"] <= 1
    # held-out patients never enter training: every run's scores are on exactly the held-out cases
    assert all(sorted(x["per_case"]) == res.test_cases for x in res.runs)
    png = utility_figure(tmp_path / "u.png", res)
    assert (tmp_path / "u.png").stat().st_size > 1000 and png.endswith("u.png")


def test_evaluate_utility_command_and_its_bad_input(tiny_run, tmp_path):
    data = _phantom_data(tmp_path / "data", n_train=4)
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "gen")
    out = tmp_path / "u"
    p = run("evaluate", "utility", "--data", str(data), "--case", "heldout", "--model", str(card), "--fractions", "0.5,1", "--seeds", "1",
            "--steps", "20", "--out", str(out), "--write-card")
    assert "real+synthetic vs real: mean Dice" in p.stdout
    doc = json.loads((out / "utility.json").read_text(encoding="utf-8"))
    assert doc["preset"]["fractions"] == [0.5, 1.0] and len(doc["rows"]) == 6
    assert (out / "tiny_utility.png").exists()
    assert json.loads(card.read_text(encoding="utf-8"))["metrics"]["utility"]["rows"] == doc["rows"]
    bad = cli("evaluate", "utility", "--data", str(data), "--case", "heldout", "--model", str(card), "--fractions", "0.5,1.5", check=False)
    assert bad.returncode != 0 and "--fractions: 1.5 must lie in (0, 1]" in bad.stderr
    bad = cli("evaluate", "utility", "--data", str(data), "--case", "heldout", "--model", str(card), "--preset", "gpu", check=False)
    assert bad.returncode != 0 and "--preset 'gpu' is not known" in bad.stderr
    with pytest.raises(CmrError, match="is not a number"):
        from cmrstudio.evaluate.utility import check_fractions

        check_fractions(["ten"])
