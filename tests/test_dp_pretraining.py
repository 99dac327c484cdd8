"""Public pre-training, then differentially private fine-tuning (`train spade --init CARD --dp-epsilon ...`):
the fine-tuning starts from the public weights (generator and discriminator), the card says what the
pre-training saw and that the privacy accounting covers only the private fine-tuning, a card of another
architecture is refused in one sentence, and a pre-training that saw private data is refused for a DP run
(recorded, and its terms inherited, for a non-private one)."""

from __future__ import annotations

import json

import pytest
import torch

from cmrstudio.errors import CmrError
from tests.helpers import cli


def _opts(tmp_path, name, **kw):
    from cmrstudio.train.spade import TrainOptions

    base = dict(out=str(tmp_path / name), name=name, phantom=3, size=64, batch=8, steps=2, sample_every=1000, save_every=1000,
                log_every=1, seed=0, augment=False)
    return TrainOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """A public pre-training (phantom only) with the DP-compatible discriminator; its run folder keeps the discriminator."""
    from cmrstudio.train.spade import SpadeTrainer

    tmp = tmp_path_factory.mktemp("public")
    tr = SpadeTrainer(_opts(tmp, "pub", dp_architecture=True, steps=3)).run(progress=False)
    assert not tr.cfg.d_spectral_norm and tr.cfg.d_groupnorm and tr.dp is None  # DP architecture, no DP
    return tmp / "pub" / "pub.json"


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_private_fine_tuning_starts_from_the_public_weights_and_says_what_the_accounting_covers(public, tmp_path):
    from cmrstudio.models.checkpoint import load_state
    from cmrstudio.train.spade import SpadeTrainer

    g0, d0 = load_state(public.with_suffix(".safetensors")), load_state(public.parent / "train_state" / "discriminator.safetensors")
    tr = SpadeTrainer(_opts(tmp_path, "ft", phantom=4, seed=1, steps=3, init=str(public), dp_epsilon=8.0, lr_g=1e-3))
    first = {}
    step = tr.train_step

    def spy(batch):  # the weights the first step starts from
        if not first:
            first.update(g=tr.G.state_dict(), ema=tr.G_ema.state_dict(), d=tr.D.state_dict())
            first.update({k: {n: t.clone() for n, t in v.items()} for k, v in first.items()})
        return step(batch)

    tr.train_step = spy
    tr.run(progress=False)
    assert _same(first["g"], g0) and _same(first["ema"], g0) and _same(first["d"], d0)
    assert not _same({k: v.detach() for k, v in tr.G.state_dict().items()}, g0)  # ...and the private steps moved it
    card = json.loads((tmp_path / "ft" / "ft.json").read_text(encoding="utf-8"))
    pre, dp = card["training"]["pretraining"], card["training"]["differential_privacy"]
    assert pre["name"] == "pub" and pre["sha256"] == json.loads(public.read_text(encoding="utf-8"))["sha256"]
    assert pre["public_only"] is True and [d["dataset"] for d in pre["data"]] == ["phantom"]
    assert pre["discriminator"].startswith("the discriminator of the public run")
    assert "covers only its fine-tuning on the private data" in pre["privacy"]
    assert dp["covers"].startswith("the fine-tuning on the data under training.data only") and dp["data_seen_privately"] == ["phantom"]
    assert dp["steps_taken"] == 3 and dp["epsilon"] <= 8.0
    from cmrstudio.evaluate.report import plain_language

    assert any("pre-trained on public data only (phantom, model pub); the ε covers only its fine-tuning" in s for s in plain_language(card))


def test_an_init_card_of_another_architecture_is_refused_in_one_sentence(public, tmp_path):
    from cmrstudio.train.spade import SpadeTrainer

    with pytest.raises(CmrError) as err:
        SpadeTrainer(_opts(tmp_path, "big", size=128, init=str(public), dp_epsilon=8.0))
    msg = err.value.message
    assert "does not match this run's architecture (size 64 (this run 128))" in msg and "same --preset and --size" in msg
    assert "\n" not in msg and msg.count(". ") == 0 and msg.endswith(".")
    p = cli("train", "spade", "--phantom", "3", "--size", "128", "--steps", "2", "--init", str(public), "--out", str(tmp_path / "cli"),
            "--quiet", check=False)
    assert p.returncode != 0 and "does not match this run's architecture" in p.stderr and "Traceback" not in p.stderr


def test_a_pretraining_that_saw_private_data_is_refused_for_dp_and_recorded_otherwise(public, tmp_path):
    from cmrstudio.train.spade import SpadeTrainer
    from tests.helpers import copy_model

    card = copy_model(public, tmp_path / "seen")
    doc = json.loads(card.read_text(encoding="utf-8"))
    doc["training"]["data"].append({"dataset": "acdc", "cases": 10, "slices": 90, "licence": "ACDC"})
    card.write_text(json.dumps(doc))
    with pytest.raises(CmrError, match="was trained on acdc, not only on public data .* would not be private"):
        SpadeTrainer(_opts(tmp_path, "dpbad", init=str(card), dp_epsilon=8.0))
    tr = SpadeTrainer(_opts(tmp_path, "plain", init=str(card), steps=1)).run(progress=False)  # not private: allowed, and said
    out = json.loads((tmp_path / "plain" / "plain.json").read_text(encoding="utf-8"))
    pre = out["training"]["pretraining"]
    assert pre["public_only"] is False and "not only public data" in pre["privacy"] and "differential_privacy" not in out["training"]
    assert "ACDC" in out["terms"]  # the pre-training data's terms bind the fine-tuned weights
    assert pre["discriminator"].startswith("fresh (the discriminator of pub's run")  # no run folder beside the copy; not 'public run'
    assert tr.dp is None


def test_an_empty_poisson_sample_releases_noise_alone_and_the_run_goes_on(tmp_path):
    """Small data and batches: some Poisson samples are empty, possibly the first. Such a sample still releases its
    network's noised update (zero per-sample gradients), for the discriminator and the generator alike (skipping it
    would change the sampling the accounting assumes); its losses are not logged, and the run does not stop."""
    from cmrstudio.train.spade import SpadeTrainer

    tr = SpadeTrainer(_opts(tmp_path, "sparse", phantom=4, batch=1, steps=6, seed=0, dp_architecture=True, dp_epsilon=50.0))
    for dl in (tr.loader, tr.g_loader):  # an empty first sample gets the batch's structure
        empty = dl.collate_fn([])
        assert empty["image"].shape[0] == 0 and empty["mask"].shape[0] == 0 and empty["image"].shape[1:] == (1, 64, 64)
    before = {k: v.clone() for k, v in tr.G.state_dict().items()}
    moved = []
    step = tr._private_step

    def watch(batch):
        d0 = {k: v.clone() for k, v in tr.D.state_dict().items()}
        out = step(batch)
        if not len(batch["image"]):  # an empty discriminator sample: noise alone moved it
            moved.append(not _same(d0, tr.D.state_dict()))
        return out

    tr._private_step = watch
    tr.run(progress=False)
    assert tr.step == 6 and moved and all(moved), moved
    assert not _same(before, tr.G.state_dict())
    logged = [json.loads(line) for line in (tmp_path / "sparse" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r for r in logged if "step" in r]
    assert sum(r["empty"] for r in steps) > 0  # empty samples happened, and were counted
    assert all(v == v for r in steps for v in r.values() if isinstance(v, float))  # and no NaN reached the log
