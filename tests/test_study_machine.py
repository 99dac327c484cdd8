"""The machine reader: a real-vs-synthetic CNN trained on slices, answering a study like a reader."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from cmrstudio.data.frame import to_frame
from cmrstudio.data.phantom import phantom_case
from cmrstudio.errors import CmrError
from cmrstudio.study.machine import (
    auc, classify, load_classifier, machine_answers, machine_read, make_training_pairs, save_classifier, train_classifier,
)

torch.set_num_threads(1)

YY, XX = np.mgrid[:128, :128]
CHECKER = (((YY + XX) % 2) * 2 - 1).astype(np.float32)


def heart_slices(seeds, n_slices=6):
    """Framed (128×128, 1.25 mm, [0, 1]) heart slices of phantom cases, one array per case."""
    out = []
    for s in seeds:
        fc = to_frame(phantom_case(seed=s, n_slices=n_slices))
        zs = [z for z in range(len(fc.mask)) if (fc.mask[z] > 0).sum() >= 20]
        out.append(fc.image[zs])
    return out


def fake(images):
    """An easy 'synthetic' class: the same slices blurred, with a one-pixel checkerboard."""
    return np.clip(ndimage.gaussian_filter(images, (0, 1.2, 1.2)) + 0.1 * CHECKER, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def separable():
    """Per case: its real slices, then their fakes (so the split by index holds out whole cases)."""
    imgs, labels = [], []
    for real in heart_slices(range(10)):
        imgs += [real, fake(real)]
        labels += [np.zeros(len(real), int), np.ones(len(real), int)]
    x, y = np.concatenate(imgs), np.concatenate(labels)
    net, info = train_classifier(x, y, steps=60, batch=16, seed=0, val_fraction=0.2)
    return net, info, x, y


def test_the_classifier_learns_a_separable_problem(separable):
    net, info, x, y = separable
    print("separable:", {k: info[k] for k in ("train_accuracy", "train_auc", "val_accuracy", "val_auc", "seconds")})
    assert info["n_val"] == 24 and info["n_val_real"] == info["n_val_synthetic"] == 12
    assert info["n_train"] + info["n_val"] == len(x)
    assert info["val_accuracy"] > 0.9 and info["val_auc"] > 0.9 and info["train_accuracy"] > 0.9
    assert 50_000 < info["architecture"]["parameters"] < 150_000
    # unseen cases, through classify
    real = np.concatenate(heart_slices(range(20, 23)))
    p_real, p_syn = classify(net, real), classify(net, fake(real))
    assert p_real.shape == (len(real),) and p_real.dtype == np.float64
    assert np.all((p_real >= 0) & (p_real <= 1))
    acc = (np.mean(p_real < 0.5) + np.mean(p_syn >= 0.5)) / 2
    assert acc > 0.9


def test_the_classifier_is_at_chance_when_both_classes_come_from_one_distribution():
    cases = heart_slices(range(30, 40))
    x = np.concatenate(cases)
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(len(x)) % 2)  # balanced labels that mean nothing
    net, info = train_classifier(x, y, steps=40, batch=16, seed=1, val_fraction=0.2)
    held = np.concatenate(heart_slices(range(60, 80)))  # 120 unseen slices, half called real, half synthetic
    yh = np.arange(len(held)) % 2
    acc = float(np.mean((classify(net, held) >= 0.5) == (yh == 1)))
    print("same distribution: val accuracy", info["val_accuracy"], "held-out accuracy", acc, "on", len(held))
    assert 0.35 <= acc <= 0.65
    assert 0.2 <= info["val_accuracy"] <= 0.8


def test_single_and_2afc_answers_are_valid_reader_records(separable):
    net = separable[0]
    real = heart_slices([90])[0][:3]
    syn = fake(real)
    items = [(f"i{k:04d}", img) for k, img in enumerate(np.concatenate([real, syn]))]
    single = machine_answers(net, items, mode="single")
    assert [r["item"] for r in single] == [i for i, _ in items]
    for r in single:
        assert r["reader"] == "machine (classifier)" and r["mode"] == "single"
        assert r["answer"] in ("real", "synthetic") and r["answer"] == ("synthetic" if r["p_synthetic"] >= 0.5 else "real")
        assert type(r["confidence"]) is int and 1 <= r["confidence"] <= 5
        assert r["confidence"] == min(5, max(1, math.ceil(abs(r["p_synthetic"] - 0.5) * 10 - 1e-9)))
        assert isinstance(r["seconds"], float) and r["seconds"] > 0
    assert [r["answer"] for r in single] == ["real"] * 3 + ["synthetic"] * 3
    pairs = [("p0001", "i0000", "i0003"), ("p0002", "i0004", "i0001"), ("p0003", "i0002", "i0005")]
    two = machine_answers(net, items, mode="2afc", pairs=pairs, reader="cnn-1")
    assert [r["item"] for r in two] == ["p0001", "p0002", "p0003"]
    assert [r["answer"] for r in two] == ["left", "right", "left"]  # the real image is the one with lower P(synthetic)
    for r in two:
        assert r["reader"] == "cnn-1" and r["mode"] == "2afc" and type(r["confidence"]) is int and 1 <= r["confidence"] <= 5
        assert r["seconds"] > 0 and r["p_synthetic_left"] != r["p_synthetic_right"]
    both = machine_read(net, items, mode="both", pairs=pairs)
    assert [r["mode"] for r in both.answers] == ["single"] * 6 + ["2afc"] * 3
    assert set(both.p_synthetic) == {i for i, _ in items}
    json.dumps(both.to_dict())  # plain JSON
    for bad, kw in [("is not known", dict(mode="vote")), ("needs pairs", dict(mode="2afc")),
                    ("not among the items", dict(mode="2afc", pairs=[("p1", "i0000", "nope")]))]:
        with pytest.raises(CmrError, match=bad):
            machine_answers(net, items, **kw)
    with pytest.raises(CmrError, match="given twice"):
        machine_answers(net, items + items[:1])
    with pytest.raises(CmrError, match="item i0000 has shape"):
        machine_answers(net, [("i0000", np.zeros((64, 64)))])
    with pytest.raises(CmrError, match="No items"):
        machine_answers(net, [])


def test_save_and_load_round_trip_and_a_damaged_file_is_refused(separable, tmp_path):
    net, info, x, _ = separable
    card_path = save_classifier(net, {**info, "data": {"phantom_cases": 10}, "renderer": "tiny"}, tmp_path / "models" / "reader.safetensors")
    assert card_path == tmp_path / "models" / "reader.json" and (tmp_path / "models" / "reader.safetensors").exists()
    card = json.loads(card_path.read_text(encoding="utf-8"))
    assert card["kind"] == "classifier" and card["architecture"]["name"] == "RealSynthCNN"
    assert card["metrics"]["val_accuracy"] == info["val_accuracy"] and card["training"]["n_train"] == info["n_train"]
    assert card["training"]["iterations"] == 60 and card["data"] == {"phantom_cases": 10} and card["training"]["renderer"] == "tiny" and len(card["sha256"]) == 64
    assert not list((tmp_path / "models").glob(".*"))  # no temporary files left behind
    for p in (card_path, tmp_path / "models" / "reader.safetensors", tmp_path / "models" / "reader"):
        net2, card2 = load_classifier(p)
        assert card2["sha256"] == card["sha256"]
        np.testing.assert_allclose(classify(net2, x[:8]), classify(net, x[:8]), rtol=0, atol=1e-6)
    in_folder = save_classifier(net, info, tmp_path / "models")
    assert in_folder == tmp_path / "models" / "classifier.json"
    np.testing.assert_allclose(classify(load_classifier(tmp_path / "models")[0], x[:2]), classify(net, x[:2]), atol=1e-6)
    w = tmp_path / "models" / "reader.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-10] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(CmrError, match="does not match the sha256") as exc:
        load_classifier(card_path)
    assert "\n" not in str(exc.value)
    w.unlink()
    with pytest.raises(CmrError, match="missing"):
        load_classifier(card_path)
    other = dict(card, kind="spade")
    (tmp_path / "models" / "gen.json").write_text(json.dumps(other))
    with pytest.raises(CmrError, match="not a real-vs-synthetic classifier"):
        load_classifier(tmp_path / "models" / "gen.json")
    with pytest.raises(CmrError, match="does not exist"):
        load_classifier(tmp_path / "nowhere.json")


def test_bad_training_inputs_get_one_sentence():
    x = np.random.default_rng(0).random((8, 128, 128), dtype=np.float32)
    y = np.array([0, 1] * 4)
    cases = [
        ("are empty", lambda: train_classifier(np.zeros((0, 128, 128), np.float32), np.zeros(0, int))),
        ("are empty", lambda: train_classifier([], [])),
        ("have shape \\(8, 64, 64\\)", lambda: train_classifier(x[:, :64, :64], y)),
        ("have shape \\(128, 128\\)", lambda: train_classifier(x[0], y[:1])),
        ("All 8 labels are real", lambda: train_classifier(x, np.zeros(8, int))),
        ("All 8 labels are synthetic", lambda: train_classifier(x, np.ones(8, int))),
        ("one label", lambda: train_classifier(x, y[:5])),
        ("hold 2", lambda: train_classifier(x, np.array([0, 1, 2, 0, 1, 0, 1, 0]))),
        ("whole numbers", lambda: train_classifier(x, y + 0.5)),
        ("non-finite", lambda: train_classifier(np.where(x > 0.99, np.nan, x), y)),
        ("steps 0", lambda: train_classifier(x, y, steps=0)),
        ("val_fraction 1", lambda: train_classifier(x, y, val_fraction=1.0)),
        ("leaves none", lambda: train_classifier(x[:2], y[:2])),
        ("are empty", lambda: classify(torch.nn.Identity(), np.zeros((0, 128, 128)))),
        ("have shape", lambda: classify(torch.nn.Identity(), np.zeros((2, 96, 96)))),
        ("No cases", lambda: make_training_pairs([], object())),
    ]
    for pattern, call in cases:
        with pytest.raises(CmrError, match=pattern) as exc:
            call()
        msg = str(exc.value)
        assert msg.endswith(".") and "\n" not in msg and "Traceback" not in msg, msg


def test_auc_counts_ties_half_and_needs_both_classes():
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auc([0.5, 0.5], [0, 1]) == 0.5
    assert math.isnan(auc([0.5, 0.6], [1, 1]))


class FakeRenderer:
    """Just what make_training_pairs uses of a renderer: its frame, and render_framed with one seed per mask."""

    size, spacing_mm = 128, 1.25

    def __init__(self):
        self.calls = []

    def render_framed(self, masks, vendor="unknown", seed=0):
        self.calls.append((vendor, list(seed)))
        return np.stack([(m > 0) * 0.5 + 0.01 * (s % 7) for m, s in zip(masks, seed)]).astype(np.float32)


def test_training_pairs_are_balanced_with_an_independent_seed_per_synthetic_slice():
    cases = [phantom_case(seed=s, n_slices=4, vendor="ge") for s in (1, 2)]
    r = FakeRenderer()
    x, y = make_training_pairs(cases, r, seeds_per_slice=2, rng_seed=3)
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (128, 128)
    assert x.min() >= 0 and x.max() <= 1 and (y == 0).sum() == (y == 1).sum() == len(y) // 2
    seeds = [s for _, ss in r.calls for s in ss]
    assert len(seeds) == (y == 1).sum() and len(set(seeds)) == len(seeds)  # one fresh seed per synthetic image
    assert {v for v, _ in r.calls} == {"ge"}
    # grouped by case: case 1's real and synthetic images come before any of case 2's
    n1 = sum(len(ss) for _, ss in r.calls[:2])
    assert list(y[: 2 * n1]) == ([0] * (n1 // 2) + [1] * (n1 // 2)) * 2
    again = make_training_pairs(cases, FakeRenderer(), seeds_per_slice=2, rng_seed=3)
    np.testing.assert_array_equal(again[0], x)
    with pytest.raises(CmrError, match="seeds_per_slice 0"):
        make_training_pairs(cases, r, seeds_per_slice=0)
    no_heart = phantom_case(seed=1, n_slices=2)
    no_heart.mask[:] = 0
    with pytest.raises(CmrError, match="None of the 1 cases"):
        make_training_pairs([no_heart], r)


def test_training_pairs_from_a_trained_spade(tiny_run):
    """The real renderer (a 64×64 tiny SPADE): images resized to the 128×128 study frame, seeds independent."""
    from cmrstudio.engine.live import Renderer

    r = Renderer(str(tiny_run.out / "tiny.json"))
    x, y = make_training_pairs([phantom_case(seed=50, n_slices=4)], r, seeds_per_slice=2, rng_seed=0)
    assert x.shape[1:] == (128, 128) and (y == 0).sum() == (y == 1).sum() > 0
    n = int((y == 1).sum()) // 2
    real_a, syn_a, real_b, syn_b = x[:n], x[n:2 * n], x[2 * n:3 * n], x[3 * n:]
    np.testing.assert_array_equal(real_a, real_b)  # each real slice once per seed
    assert np.abs(syn_a - syn_b).mean() > 1e-3  # a different latent for each synthetic copy
    seen = []
    net, info = train_classifier(x, y, steps=5, batch=4, val_fraction=0.25, progress=lambda d: seen.append(d) or d["step"] < 2)
    assert info["steps_done"] == 2 and [d["step"] for d in seen] == [1, 2] and seen[0]["steps"] == 5
    assert info["n_val"] == 2 * max(1, round(0.25 * len(x) / 2))
