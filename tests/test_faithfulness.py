"""Mask faithfulness: a real-trained segmenter on synthetic images of held-out masks."""

import json

import numpy as np
import pytest

from cmrstudio.evaluate.faithfulness import evaluate_faithfulness
from cmrstudio.metrics import dice
from cmrstudio.io import read_cases
from cmrstudio.models.checkpoint import verify
from cmrstudio.models.registry import build_model, get_model
from cmrstudio.engine.segment import segment_framed
from cmrstudio.train.segmenter import SegOptions, train_segmenter

from helpers import cli, copy_model, run


def test_dice_counts_overlap_and_skips_absent_structures():
    ref = np.zeros((2, 10, 10), np.uint8)
    ref[:, 2:6, 2:6] = 1
    pred = ref.copy()
    assert dice(pred, ref, 1) == 1.0 and dice(pred, ref, 3) is None
    pred[:, 2:4] = 0  # half of LV missed
    assert dice(pred, ref, 1) == pytest.approx(2 * 16 / (16 + 32))


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    return train_segmenter(SegOptions(phantom=4, out=str(out), name="tinyseg", steps=60, batch=8, seed=0), progress=False)


def test_segmenter_learns_the_phantom_and_its_card_is_complete(tiny_segmenter, tmp_path):
    card = tiny_segmenter.card
    assert card["kind"] == "segmenter" and card["training"]["iterations"] == 60
    log = [json.loads(line) for line in (tiny_segmenter.card_path.parent / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    net = build_model(get_model(str(tiny_segmenter.card_path), kind="segmenter"))
    run("phantom", "--n", "1", "--out", str(tmp_path / "ph"), "--size", "128", "--slices", "3", "--seed", "99")
    from cmrstudio.data.frame import to_frame

    case = read_cases(tmp_path / "ph")[0]
    fc = to_frame(case)
    pred = segment_framed(net, fc.image)
    assert pred.shape == fc.mask.shape
    assert dice(pred, fc.mask, 1) > 0.5  # it has learnt the bright LV blood pool


def test_faithfulness_reports_real_and_synthetic_dice_and_writes_the_card(tiny_run, tiny_segmenter, tmp_path):
    run("phantom", "--n", "2", "--out", str(tmp_path / "held"), "--size", "96", "--slices", "3", "--seed", "7")
    cases = read_cases(tmp_path / "held")
    res = evaluate_faithfulness(cases, model=str(tiny_run.out / "tiny.json"), segmenter=str(tiny_segmenter.card_path), seeds=2)
    assert res.n_cases == len(cases) == 4 and res.seeds == 2
    for side in (res.real, res.synthetic):
        assert set(side) == {"LV", "MYO", "RV", "mean"} and all(0 <= v <= 1 for v in side.values())
    card_path = copy_model(tiny_run.out / "tiny.json", tmp_path / "gen").parent
    p = run("evaluate", "faithfulness", "--data", str(tmp_path / "held"), "--case", cases[0].case_id.rsplit("_", 1)[0],
            "--model", str(card_path / "tiny.json"), "--segmenter", str(tiny_segmenter.card_path), "--seeds", "1", "--write-card")
    assert "on synthetic images" in p.stdout
    m = json.loads((card_path / "tiny.json").read_text(encoding="utf-8"))["metrics"]["mask_faithfulness_dice"]
    assert m["cases"] == 2 and m["segmenter"] == "tinyseg" and set(m["real"]) == {"LV", "MYO", "RV", "mean"}
    assert m["segmenter_sha256"] == tiny_segmenter.card["sha256"]  # which segmenter's weights scored it
    verify(get_model(str(card_path / "tiny.json")))  # the rewritten card still matches its weights
    p = cli("evaluate", "faithfulness", "--data", str(tmp_path / "held"), "--case", "nobody", "--model", str(card_path / "tiny.json"),
            "--segmenter", str(tiny_segmenter.card_path), check=False)
    assert p.returncode == 2 and "No case in" in p.stderr


def test_faithfulness_renders_every_slice_with_its_own_seed_as_fidelity_does(tiny_run, tiny_segmenter, tmp_path, monkeypatch):
    """Dice on renders is a mean over independent samples: no two slices (of one case or of different cases) share a
    seed, and the slices get the seeds evaluate_fidelity gives them, so both figures score the same renders."""
    from cmrstudio.engine.base import GeneratorFront
    from cmrstudio.evaluate.fidelity import evaluate_fidelity

    run("phantom", "--n", "2", "--out", str(tmp_path / "held"), "--size", "96", "--slices", "3", "--seed", "7")
    cases = read_cases(tmp_path / "held")
    seen: list = []
    orig = GeneratorFront.render_framed

    def spy(self, masks, vendor="unknown", seed=0, *a, **k):
        out = orig(self, masks, vendor, seed, *a, **k)
        seen.append((list(seed) if not np.isscalar(seed) else [seed] * len(masks), out))
        return out

    monkeypatch.setattr(GeneratorFront, "render_framed", spy)
    model = str(tiny_run.out / "tiny.json")
    res = evaluate_faithfulness(cases, model=model, segmenter=str(tiny_segmenter.card_path), seeds=2)
    faith = seen[:]
    seeds = [s for ss, _ in faith for s in ss]
    assert len(seeds) == len(set(seeds)) == 2 * res.n_slices > 2 * len(cases)  # every slice of every case and seed drew its own
    seen.clear()
    evaluate_fidelity(cases, model=model, seeds=2)
    fid_seeds = [s for ss, _ in seen for s in ss]
    assert fid_seeds == seeds
    np.testing.assert_array_equal(np.concatenate([o for _, o in faith]), np.concatenate([o for _, o in seen]))
