"""The evaluation orchestration the CLI, the GUI and scripts share: figures recorded in model cards, `evaluate all`.

The evaluations themselves are stubbed (their own tests run them); these tests check what is run on which cases,
what goes into the card and what is written, in seconds.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from cmrstudio.errors import CmrError

from helpers import copy_model

SHIPPED = Path(__file__).resolve().parents[1] / "resources" / "models"


@pytest.fixture
def model(tmp_path):
    """A copy of the shipped SPADE model, whose card may be written."""
    return copy_model(SHIPPED / "spade-cmr.json", tmp_path / "model")


@pytest.fixture
def data(tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case

    out = tmp_path / "data"
    for i in range(3):
        write_case(phantom_case(i, n_slices=3, shape=(64, 64), phase="ED"), out)
    return out


def test_record_metric_writes_the_figure_with_its_command_and_refreshes_the_headline(model):
    from cmrstudio.evaluate.cards import record_metric
    from cmrstudio.evaluate.report import headline
    from cmrstudio.models.registry import get_model

    card = json.loads(model.read_text(encoding="utf-8"))  # figures recorded earlier (the shipped card may have none yet)
    card["metrics"] = {**card.get("metrics", {}), "fidelity": {"fid": 300.0, "kid": 0.2, "command": "earlier"},
                       "diversity": {"ms_ssim": 0.4, "command": "earlier"}}
    model.write_text(json.dumps(card))
    before = json.loads(model.read_text(encoding="utf-8"))["metrics"]
    fid = {**before["fidelity"], "fid": 12.5}
    del fid["command"]
    info = record_metric(str(model), "fidelity", fid, command="cmrstudio evaluate fidelity --data d")
    card = json.loads(model.read_text(encoding="utf-8"))
    assert card["metrics"]["fidelity"] == {**fid, "command": "cmrstudio evaluate fidelity --data d"}
    assert card["headline"] == headline(card) and info.card["metrics"]["fidelity"]["fid"] == 12.5
    record_metric(get_model(str(model)), "fidelity", fid)  # a ModelInfo; no command: none recorded
    assert "command" not in json.loads(model.read_text(encoding="utf-8"))["metrics"]["fidelity"]
    after = json.loads(model.read_text(encoding="utf-8"))["metrics"]
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before if k != "fidelity")  # the others stay


def test_evaluations_begun_side_by_side_keep_each_others_figures(model):
    """Two evaluations of one model read its card when they begin (two processes, say fidelity and realism); the one
    that finishes second must not write back the card it read and lose the first one's figure."""
    from cmrstudio.evaluate.cards import record_metric
    from cmrstudio.models.registry import get_model

    first, second = get_model(str(model)), get_model(str(model))  # both began before either finished
    record_metric(first, "fidelity", {"fid": 250.0, "kid": 0.2}, command="cmrstudio evaluate fidelity --write-card")
    record_metric(second, "realism_synthetic", {"kid": 0.19}, command="cmrstudio evaluate realism --write-card")
    metrics = json.loads(model.read_text(encoding="utf-8"))["metrics"]
    assert metrics["fidelity"]["fid"] == 250.0 and metrics["realism_synthetic"]["kid"] == 0.19
    assert metrics["fidelity"]["command"].startswith("cmrstudio evaluate fidelity")
    # weights retrained in place while a third was measuring: its figure is refused, the card kept as the file holds it
    third = get_model(str(model))
    card = json.loads(model.read_text(encoding="utf-8"))
    model.write_text(json.dumps({**card, "sha256": "0" * 64}), encoding="utf-8")
    with pytest.raises(CmrError, match="changed while it was being measured"):
        record_metric(third, "retrained_check", {"kid": 0.5})
    assert json.loads(model.read_text(encoding="utf-8"))["metrics"] == metrics


def test_evaluate_all_runs_each_evaluation_on_the_held_out_patients_and_records_it(model, data, tmp_path, monkeypatch):
    import cmrstudio.evaluate.faithfulness as fa
    import cmrstudio.evaluate.fidelity as fi
    import cmrstudio.evaluate.privacy as pr
    import cmrstudio.evaluate.realism as re_
    import cmrstudio.evaluate.utility as ut
    from cmrstudio.evaluate.run import ModelReport, evaluate_all

    # figures in the card format, as an earlier evaluation of the heart-crop spade-cmr wrote them (the retrained model's
    # card has none until runs/final_eval.sh runs); evaluate_all must pass them through to the card unchanged
    shipped = json.loads((Path(__file__).parent / "data" / "card_metrics.json").read_text(encoding="utf-8"))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("command", "cases_evaluated")}  # noqa: E731
    calls = []

    def result(d):
        return types.SimpleNamespace(**d, to_dict=lambda: dict(d))

    def fidelity(cases, **kw):
        calls.append(("fidelity", sorted(c.case_id for c in cases), kw))
        return result(strip(shipped["fidelity"]))

    def faithfulness(cases, **kw):
        calls.append(("faithfulness", sorted(c.case_id for c in cases), kw))
        return result({**strip(shipped["mask_faithfulness_dice"]), "per_case": [{"case": c.case_id} for c in cases]})

    def diversity(cases, **kw):
        calls.append(("diversity", sorted(c.case_id for c in cases), kw))
        return strip(shipped["diversity"])

    def privacy(cases, held, **kw):
        calls.append(("privacy", sorted(c.case_id for c in cases), {**kw, "held": held}))
        return result({**strip(shipped["privacy"]), "figure": None})

    def realism(held_cases, reference, **kw):
        calls.append(("realism", sorted(c.case_id for c in held_cases), {**kw, "reference": sorted(c.case_id for c in reference)}))
        return result({"mode": kw["mode"], "kid": 0.5, "kid_real_floor": 0.01})

    def utility(cases, held, **kw):
        calls.append(("utility", sorted(c.case_id for c in cases), {**kw, "held": held}))
        kw["progress"](1, 1, "one segmenter")
        return result({**strip(shipped["utility"]), "runs": []})

    monkeypatch.setattr(fi, "evaluate_fidelity", fidelity)
    monkeypatch.setattr(fi, "evaluate_diversity", diversity)
    monkeypatch.setattr(fa, "evaluate_faithfulness", faithfulness)
    monkeypatch.setattr(pr, "evaluate_privacy", privacy)
    monkeypatch.setattr(ut, "evaluate_utility", utility)
    monkeypatch.setattr(re_, "evaluate_realism", realism)
    monkeypatch.setattr(ut, "utility_figure", lambda path, res: str(path))

    seen, progress = [], []
    out = tmp_path / "evaluation"
    res = evaluate_all([str(data)], ["phantom_0001", "phantom_0002"], str(model), seeds=2, utility="cpu", out=out,
                       command="cmrstudio evaluate all", on_step=lambda n: seen.append(("step", n)),
                       on_result=lambda n, r: seen.append(("result", n)), progress=lambda *a: progress.append(a))
    order = ["fidelity", "faithfulness", "diversity", "realism", "realism in patient", "privacy", "utility"]  # a scene model
    assert seen == [x for n in order for x in (("step", n), ("result", n))] + [("result", "report")]
    assert [c[0] for c in calls] == [n.split()[0] for n in order] and progress == [(1, 1, "one segmenter")]
    held, every = ["phantom_0001_ED", "phantom_0002_ED"], ["phantom_0000_ED", "phantom_0001_ED", "phantom_0002_ED"]
    assert [c[1] for c in calls] == [held, held, held, held, held, every, every]  # the attacks and utility need the training patients too
    assert calls[3][2]["reference"] == ["phantom_0000_ED"] and calls[3][2]["mode"] == "synthetic"  # the real-vs-real floor: other patients
    assert calls[4][2]["mode"] == "in-patient"
    assert calls[0][2]["seeds"] == 2 and calls[2][2]["masks"] == 16 and calls[5][2]["max_members"] == 200
    assert calls[5][2]["held"] == calls[6][2]["held"] == ["phantom_0001", "phantom_0002"]
    card = json.loads(model.read_text(encoding="utf-8"))
    for key in ("fidelity", "mask_faithfulness_dice", "diversity", "realism_synthetic", "realism_in_patient", "privacy", "utility"):
        assert card["metrics"][key]["command"] == "cmrstudio evaluate all"
    assert card["metrics"]["fidelity"]["cases_evaluated"] == held and card["metrics"]["utility"]["preset_name"] == "cpu"
    assert (out / "privacy.json").exists() and (out / "utility.json").exists()
    assert isinstance(res["report"], ModelReport) and res["report"].path == out / "spade-cmr_report.html" and res["report"].path.exists()
    assert res["report"].info.card["metrics"]["fidelity"]["command"] == "cmrstudio evaluate all"
    page = res["report"].path.read_text(encoding="utf-8")  # a realism record with only some figures shows those, the rest as —
    assert "Realism, fully synthetic" in page and "KID 500.0 ± — ×10⁻³ (real vs real 10.0)" in page
    assert calls[3][2]["readers"] == 3  # the realism evaluations train 3 machine readers unless told otherwise

    with pytest.raises(CmrError, match="matches --case nobody"):
        evaluate_all([str(data)], ["nobody"], str(model), out=out)


def test_single_evaluations_default_to_the_model_s_held_out_patients(data, capsys):
    """`evaluate fidelity / faithfulness / diversity` without --case score the patients the generator's card holds out
    (as `evaluate all` does), never its training patients; --case still picks."""
    from cmrstudio.cli.common import _eval_inputs
    from cmrstudio.models.registry import get_model
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "acdc").exists():
        pytest.skip("../shared/data/acdc is not beside this checkout")
    held = get_model("spade-cmr").card["training"]["held_out_case_prefixes"]
    cases, _ = _eval_inputs([str(SHARED_DATA / "acdc")], [], 1, None, None, "spade-cmr")
    ids = {c.case_id for c in cases}
    assert ids and all(any(i.startswith(p) for p in held) for i in ids)
    assert len(ids) == 2 * len([p for p in held if p.startswith("patient")])  # ED and ES of each held-out ACDC patient
    picked, _ = _eval_inputs([str(SHARED_DATA / "acdc")], ["patient001"], 1, None, None, "spade-cmr")
    assert {c.case_id.split("_")[0] for c in picked} == {"patient001"}
    # data that holds none of them (a phantom, another centre): all of it, with a note
    from cmrstudio.data.dataset import cases_from

    other, _ = _eval_inputs([str(data)], [], 1, None, None, "spade-cmr")
    assert sorted(c.case_id for c in other) == sorted(c.case_id for c in cases_from([str(data)])) and len(other) == 3
    assert "none of the patients spade-cmr's card holds out" in capsys.readouterr().err
