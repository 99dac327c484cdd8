"""Privacy: nearest-neighbour memorisation and authenticity with known answers, membership inference
against a model that memorised its training patients (and against one that learnt nothing), the
`evaluate privacy` command, and differentially private SPADE training that stops at the asked epsilon."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrstudio.errors import CmrError
from tests.helpers import cli, copy_model, run


def _phantom_slices(seeds, size=64):
    """Framed heart slices of phantom patients (one patient per seed), in a renderer-like frame."""
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.evaluate.privacy import SliceSet
    from cmrstudio.data.slices import framed_slices

    imgs, masks, vendors, patients = [], [], [], []
    for s in seeds:
        for c, im, m in framed_slices([phantom_case(seed=s, vendor="siemens")], size, 1.25 * 128 / size):
            imgs.append(im)
            masks.append(m)
            vendors += [c.vendor] * len(m)
            patients += [c.case_id] * len(m)
    return SliceSet(np.concatenate(imgs), np.concatenate(masks), vendors, patients, patients)


def test_nearest_neighbours_flag_copies_and_pass_new_patients():
    from cmrstudio.evaluate.privacy import features, nearest_neighbours

    train = _phantom_slices(range(6))
    new = _phantom_slices(range(50, 53))
    ft = features(train.images, "pixel")
    rng = np.random.default_rng(0)
    copies = np.clip(train.images[::3] + rng.normal(0, 0.003, train.images[::3].shape), 0, 1).astype(np.float32)
    memorised = nearest_neighbours(ft, train.patients, features(copies, "pixel"), features(new.images, "pixel"), space="pixel")
    assert memorised.memorisation_ratio == 1.0 and memorised.memorised == len(copies)  # every near copy is flagged
    assert memorised.authenticity == 0.0  # closer to a training image than that image is to any other patient's
    assert memorised.distance_ratio < 0.1
    assert memorised.closest[0]["flagged"] and memorised.closest[0]["distance"] <= memorised.closest[-1]["distance"]
    # new patients from the same distribution, as a private generator would make: not flagged, as authentic as real ones
    fresh = _phantom_slices(range(80, 83))
    private = nearest_neighbours(ft, train.patients, features(fresh.images, "pixel"), features(new.images, "pixel"), space="pixel")
    assert private.memorisation_ratio <= 0.1 and private.holdout_memorisation_ratio <= 0.1
    assert 0.7 < private.distance_ratio < 1.4
    assert abs(private.authenticity - private.holdout_authenticity) < 0.35
    with pytest.raises(CmrError, match="at least two patients"):
        nearest_neighbours(ft[:3], ["a"] * 3, ft[:2])


def test_tpr_at_low_fpr_and_auc_on_known_scores():
    from cmrstudio.evaluate.privacy import attack_summary

    members = np.array([5.0, 4.0, 3.0, 0.5])
    nonmembers = np.array([2.0, 1.0, 0.0, -1.0])
    s = attack_summary(members, nonmembers)
    assert s["auc"] == pytest.approx(14 / 16)  # 14 of the 16 member/non-member pairs are ordered right
    assert s["tpr_at_1pct_fpr"] == pytest.approx(0.75)  # three members above every non-member
    assert s["tpr_at_0_1pct_fpr"] == pytest.approx(0.75) and s["fpr_resolution"] == 0.25  # 4 non-members: no finer FPR exists
    s = attack_summary(np.array([9.0, 8.0, 0.5]), np.concatenate([[8.5, 8.4], np.linspace(-5, 0, 998)]))
    assert s["tpr_at_1pct_fpr"] == pytest.approx(1.0)  # 2 false alarms in 1000 are within 1%: every member counts
    assert s["tpr_at_0_1pct_fpr"] == pytest.approx(1 / 3)  # ...but 0.1% allows 1: only the member above 8.5
    assert attack_summary(np.arange(10.0), np.arange(10.0) + 100)["auc"] == 0.0


def _clustered(seed, n_members=20, n_nonmembers=12, per=10, leak=0.0):
    """Attack scores of patients whose slices share a patient effect (SD 1) plus slice noise (SD 0.3); members
    get ``leak`` added to every slice."""
    rng = np.random.default_rng(seed)

    def group(n, tag, shift):
        s, p = [], []
        for i in range(n):
            s += list(rng.normal(0, 1.0) + rng.normal(0, 0.3, per) + shift)
            p += [f"{tag}{i}"] * per
        return np.array(s), p

    return group(n_members, "m", leak) + group(n_nonmembers, "n", 0.0)


def test_control_split_keeps_patient_differences_from_passing_as_leakage():
    from cmrstudio.evaluate.privacy import attack_summary, controlled

    # no leakage, but slices of a patient alike: the raw AUC and its slice-level interval say "leak", the control does not
    pos, pp, neg, npat = _clustered(13)
    raw = attack_summary(pos, neg)
    assert raw["auc"] > 0.6 and raw["auc_ci"][0] > 0.5  # naive reading: members are found
    c = controlled(pos, neg, pp, npat)
    assert c["gap_ci"][0] < 0 < c["gap_ci"][1]  # the gap to the control holds 0: no evidence of leakage
    assert abs(c["control_auc"] - 0.5) < 0.05 and c["patients_per_half"] == 6 and c["member_patients_drawn"] == 6
    assert 0.3 < c["member_control_auc"] < 0.7
    # a model that does leak (every member slice scores higher): the gap's whole interval is above 0
    pos, pp, neg, npat = _clustered(13, leak=2.5)
    c = controlled(pos, neg, pp, npat)
    assert c["gap"] > 0.3 and c["gap_ci"][0] > 0
    # too few non-member patients for two halves: no control rather than a meaningless one
    assert controlled(pos, neg[:30], pp, npat[:30]) is None


def test_copy_detection_counts_reproduced_training_slices_against_the_non_member_control():
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.evaluate.privacy import COPY_PERCENTILE, copy_detection, slices_of

    class Frame:  # the frame slices_of needs: size and pixel size of a renderer
        size, spacing_mm = 64, 2.5

    both = lambda seeds: [phantom_case(seed=s, phase=ph, vendor="siemens") for s in seeds for ph in ("ED", "ES")]  # noqa: E731
    members, nonmembers = slices_of(both(range(4)), Frame), slices_of(both(range(50, 53)), Frame)
    rng = np.random.default_rng(0)
    near = lambda x: np.clip(x + rng.normal(0, 0.002, x.shape), 0, 1).astype(np.float32)  # noqa: E731
    fresh = slices_of(both(range(100, 104)), Frame).images
    # a model that gives back its training slices: every member slice has a render closer than the threshold
    res, pairs = copy_detection(members, nonmembers, near(members.images)[None], fresh[None, :len(nonmembers)], "pixel", "cpu", top=4)
    assert res["reproduced"] == 1.0 and res["nonmember_control"] <= 0.1
    assert res["threshold_from"].startswith(f"{COPY_PERCENTILE:g}th percentile") and res["threshold"] > 0
    assert len(pairs) == 4 and res["closest"][0]["copy"] and res["closest"][0]["distance"] <= res["closest"][-1]["distance"]
    # a model that makes new hearts: nothing reproduced, like the control
    res, _ = copy_detection(members, nonmembers, fresh[None, :len(members)], fresh[None, :len(nonmembers)], "pixel", "cpu")
    assert res["reproduced"] <= 0.1 and abs(res["reproduced"] - res["nonmember_control"]) <= 0.15


@pytest.fixture(scope="module")
def memorising_flow(tmp_path_factory):
    """A tiny flow model trained hard on two phantom patients (no augmentation): it memorises them."""
    from cmrstudio.train.diffusion import DiffusionOptions, DiffusionTrainer

    out = tmp_path_factory.mktemp("mem") / "run"
    DiffusionTrainer(DiffusionOptions(out=str(out), name="mem", objective="flow", preset="tiny", phantom=2, size=32, batch=8, steps=300,
                                      sample_every=10_000, save_every=10_000, log_every=50, augment=False, vendor_dropout=0.0,
                                      cond_drop=0.0, ema=0.9, warmup=20, lr=1e-3, seed=0)).run(progress=False)
    return out / "mem.json"


def test_membership_attacks_find_the_patients_a_model_memorised(memorising_flow, tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.evaluate.privacy import attack_summary, denoising_scores, reconstruction_scores, slices_of
    from cmrstudio.train.diffusion import DiffusionOptions, DiffusionTrainer

    r = open_renderer(str(memorising_flow))
    # the training patients (phantom seeds 0 and 1, as --phantom 2 made them) against two new ones
    members = slices_of([phantom_case(seed=0, vendor="siemens"), phantom_case(seed=1, vendor="philips")], r)
    others = slices_of([phantom_case(seed=100, vendor="siemens"), phantom_case(seed=101, vendor="philips")], r)
    assert len(members) >= 8 and len(others) >= 8
    den = attack_summary(denoising_scores(r, members), denoising_scores(r, others))
    rec = attack_summary(reconstruction_scores(r, members, seeds=2), reconstruction_scores(r, others, seeds=2))
    assert den["auc"] > 0.95 and den["tpr_at_1pct_fpr"] > 0.5
    assert rec["auc"] > 0.9
    # the same attack on a model that has learnt nothing (one step) cannot tell members apart
    DiffusionTrainer(DiffusionOptions(out=str(tmp_path / "blank"), name="blank", objective="flow", preset="tiny", phantom=2, size=32, batch=8,
                                      steps=1, sample_every=10, save_every=10, log_every=1, augment=False, seed=0)).run(progress=False)
    b = open_renderer(str(tmp_path / "blank" / "blank.json"))
    blank = attack_summary(denoising_scores(b, members), denoising_scores(b, others))
    assert abs(blank["auc"] - 0.5) < 0.3


def test_evaluate_privacy_command_writes_json_figure_and_card(tiny_run, tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case

    data = tmp_path / "data"
    for i in range(4):  # the tiny run's own training patients (--phantom 4, seed 0)...
        write_case(phantom_case(seed=i, vendor=("siemens", "philips", "ge", "canon")[i]), data)
    for i in (200, 201):  # ...and two it never saw
        c = phantom_case(seed=i, vendor="siemens")
        c.case_id = f"heldout{i}_ED"
        write_case(c, data)
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "gen")
    out = tmp_path / "privacy"
    p = run("evaluate", "privacy", "--data", str(data), "--case", "heldout", "--model", str(card), "--space", "pixel", "--seeds", "2",
            "--out", str(out), "--write-card")
    assert "membership inference, reconstruction: AUC" in p.stdout and "memorised" in p.stdout
    doc = json.loads((out / "privacy.json").read_text(encoding="utf-8"))
    assert doc["members"]["patients"] == 4 and doc["nonmembers"]["patients"] == 2
    assert doc["nonmembers"]["cases"] == ["heldout200_ED", "heldout201_ED"]
    assert 0 <= doc["nearest"]["memorisation_ratio"] <= 1 and doc["attacks"]["reconstruction"]["members"] == doc["members"]["slices"]
    by = doc["attacks"]["reconstruction"]["by_dataset"]  # every case here comes from one source: its AUC is the pooled one
    assert len(by) == 1 and next(iter(by.values()))["auc"] == doc["attacks"]["reconstruction"]["auc"]
    assert (out / "tiny_closest_pairs.png").stat().st_size > 1000
    rec = doc["attacks"]["reconstruction"]
    assert rec["control"] is None  # 2 held-out patients cannot be split into control halves
    assert "reconstruction_calibrated" in doc["attacks"] and doc["attacks"]["reconstruction_calibrated"]["members"] == rec["members"]
    assert "tpr_at_0_1pct_fpr" in rec
    metrics = json.loads(card.read_text(encoding="utf-8"))["metrics"]["privacy"]
    assert metrics["attacks"]["reconstruction"]["auc"] == doc["attacks"]["reconstruction"]["auc"]
    assert metrics["command"].startswith("cmrstudio evaluate privacy")
    rep = run("evaluate", "report", str(card), "--out", str(tmp_path / "report"), "--figures", str(out))
    assert "An attacker holding a patient's image and mask" in rep.stdout
    page = (tmp_path / "report" / "tiny_report.html").read_text(encoding="utf-8")
    assert "Membership-inference ROC curves" in page and "tiny_closest_pairs.png" in page and "Methods" in page
    h = json.loads(card.read_text(encoding="utf-8"))["headline"]
    assert h["membership_auc"] == doc["attacks"][h["membership_attack"]]["auc"] and h["private"] is False
    assert "It was trained without differential privacy" in rep.stdout
    bad = cli("evaluate", "privacy", "--data", str(data), "--case", "nobody", "--model", str(card), "--space", "pixel", check=False)
    assert bad.returncode != 0 and "No case matches the held-out patients nobody" in bad.stderr
    bad = cli("evaluate", "privacy", "--data", str(data), "--case", "heldout", "--model", str(card), "--space", "vgg", check=False)
    assert bad.returncode != 0 and "--space 'vgg' is not known" in bad.stderr


# -- differentially private training -------------------------------------------------------------

def _dp_opts(tmp_path, name, **kw):
    from cmrstudio.train.spade import TrainOptions

    base = dict(out=str(tmp_path / name), name=name, phantom=4, size=64, batch=8, sample_every=1000, save_every=1000, log_every=5, seed=0)
    return TrainOptions(**{**base, **kw})


def test_private_training_spends_exactly_the_asked_epsilon(tmp_path):
    import torch

    from cmrstudio.models.spade import SpadeGenerator
    from cmrstudio.train.spade import SpadeTrainer

    tr = SpadeTrainer(_dp_opts(tmp_path, "dp", steps=12, dp_epsilon=2.0, dp_delta=1e-5))
    names = [n for n, _ in tr.D.named_parameters()]
    assert not any(n.endswith("weight_orig") for n in names)  # no spectral norm where DP applies
    assert any(isinstance(m, torch.nn.GroupNorm) for m in tr.D.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in list(tr.D.modules()) + list(tr.G.modules()))
    before = {k: v.clone() for k, v in tr.G.state_dict().items()}
    tr.run(progress=False)
    card = json.loads((tmp_path / "dp" / "dp.json").read_text(encoding="utf-8"))
    dp = card["training"]["differential_privacy"]
    assert dp["steps_taken"] == 12 and dp["stopped_by"] == "steps"
    assert 1.8 <= dp["epsilon"] <= 2.0  # the noise was calibrated to spend the budget in --steps
    assert dp["noise_multiplier"] > 0.5 and dp["sample_rate"] == pytest.approx(8 / len(tr.ds))
    assert any(not torch.equal(before[k], v) for k, v in tr.G.state_dict().items())  # it learnt
    g = SpadeGenerator(tr.cfg)
    g.load_state_dict(tr.G_ema.state_dict())  # the shipped weights load into the plain architecture


def test_private_training_stops_when_the_budget_is_spent(tmp_path):
    from cmrstudio.train.spade import SpadeTrainer

    tr = SpadeTrainer(_dp_opts(tmp_path, "dpstop", steps=1000, dp_epsilon=2.0, dp_noise=3.0)).run(progress=False)
    dp = json.loads((tmp_path / "dpstop" / "dpstop.json").read_text(encoding="utf-8"))["training"]["differential_privacy"]
    assert dp["stopped_by"] == "privacy budget" and dp["steps_taken"] == tr.step < 1000
    assert dp["epsilon"] <= 2.0 < tr._epsilon_after(tr.step + 1)  # one more step would have passed it
    assert dp["epsilon"] == pytest.approx(tr._epsilon_after(tr.step), rel=1e-3)  # the accountant saw exactly these steps


def test_private_training_bad_options_get_one_sentence(tmp_path):
    from cmrstudio.train.spade import SpadeTrainer

    with pytest.raises(CmrError, match="--dp-epsilon 0.0 must be above 0"):
        SpadeTrainer(_dp_opts(tmp_path, "a", steps=5, dp_epsilon=0.0))
    with pytest.raises(CmrError, match="--dp-delta 2.0 must lie between 0 and 1"):
        SpadeTrainer(_dp_opts(tmp_path, "b", steps=5, dp_epsilon=1.0, dp_delta=2.0))
    with pytest.raises(CmrError, match="spent before the first step"):
        SpadeTrainer(_dp_opts(tmp_path, "c", steps=5, dp_epsilon=0.1, dp_noise=1.0))
    p = cli("train", "spade", "--phantom", "4", "--size", "64", "--steps", "3", "--out", str(tmp_path / "d"), "--dp-epsilon", "1",
            "--resume", "--quiet", check=False)
    assert p.returncode != 0 and "does not continue a differentially private run" in p.stderr


def test_evaluate_all_records_every_aspect_in_the_card_and_reports(tiny_run, tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case

    data = tmp_path / "data"
    for i in range(3):
        write_case(phantom_case(seed=i, vendor="siemens", n_slices=4), data)
    for i in (500, 501):
        c = phantom_case(seed=i, vendor="siemens", n_slices=4)
        c.case_id = f"heldout{i}_ED"
        write_case(c, data)
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "gen")
    out = tmp_path / "eval"
    bad = cli("evaluate", "all", "--data", str(data), "--case", "heldout", "--model", str(card), "--classifier-steps", "0",
              "--out", str(out), check=False)
    assert bad.returncode != 0 and "--classifier-steps 0 must be at least 1" in bad.stderr and not out.exists()  # refused before any work
    # the machine reader trains 30 steps here (400 by default): the figures are not the point, that each is recorded
    p = run("evaluate", "all", "--data", str(data), "--case", "heldout", "--model", str(card), "--space", "pixel",
            "--classifier-steps", "30", "--out", str(out))
    for section in ("== fidelity", "== faithfulness", "== diversity", "== realism", "== privacy"):
        assert section in p.stdout
    assert "30 steps" in p.stdout
    doc = json.loads(card.read_text(encoding="utf-8"))
    assert {"fidelity", "mask_faithfulness_dice", "diversity", "privacy", "realism_synthetic"} <= set(doc["metrics"])
    assert doc["metrics"]["realism_synthetic"]["classifier_steps"] == 30
    assert len(doc["metrics"]["realism_synthetic"]["machine_readers"]) == 3 and "mean of 3 readers" in p.stdout  # each with its own seed
    assert doc["metrics"]["fidelity"]["cases_evaluated"] == ["heldout500_ED", "heldout501_ED"]  # held-out patients only
    assert 0 < doc["metrics"]["diversity"]["ms_ssim_between_seeds"] <= 1
    h = doc["headline"]
    assert h["fid"] == doc["metrics"]["fidelity"]["fid"] and h["membership_auc"] == doc["metrics"]["privacy"]["attacks"][h["membership_attack"]]["auc"]
    page = (out / "tiny_report.html").read_text(encoding="utf-8")
    assert "Mask faithfulness" in page and "Membership" in page and page.count("<img") >= 3
    assert "Realism, fully synthetic" in page and h["realism_synthetic_reader_accuracy"] == doc["metrics"]["realism_synthetic"]["machine_accuracy"]
