"""The fine tissue-class prior: trained (real flow matching on phantom scans), read back, sampled, and a scene model
trained on the slices' own fine classes renders fully synthetic scenes from it through the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrstudio.errors import CmrError
from helpers import cli, copy_model, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fine prior and a tiny scene SPADE trained on its cells, installed as the user's models."""
    root = tmp_path_factory.mktemp("fine")
    user = root / "models"
    common = ["--phantom", "6", "--batch", "2", "--threads", "1"]
    run("train", "flow", "--preset", "layout-fine-tiny", "--size", "32", "--steps", "6", "--sample-every", "6", "--save-every", "6",
        "--out", str(root / "fine"), "--name", "fine-t", *common)
    run("train", "spade", "--preset", "scene-tiny", "--steps", "2", "--sample-every", "2", "--save-every", "2",
        "--layout-prior", str(root / "fine" / "fine-t.json"), "--out", str(root / "scene"), "--name", "scene-t", *common)
    # the same, trained without tissue classes on the heart and within 5 mm of it (--hide-heart-classes)
    run("train", "spade", "--preset", "scene-tiny", "--steps", "2", "--sample-every", "2", "--save-every", "2", "--hide-heart-classes", "5",
        "--layout-prior", str(root / "fine" / "fine-t.json"), "--out", str(root / "hidden"), "--name", "hidden-t", *common)
    # and a scene flow model trained the same way (the option lives in the shared trainer)
    run("train", "flow", "--preset", "scene-tiny", "--steps", "2", "--sample-every", "2", "--save-every", "2", "--hide-heart-classes", "5",
        "--layout-prior", str(root / "fine" / "fine-t.json"), "--out", str(root / "hidden-flow"), "--name", "hidden-flow-t", *common)
    copy_model(root / "hidden-flow" / "hidden-flow-t.json", user)
    copy_model(root / "fine" / "fine-t.json", user)
    copy_model(root / "scene" / "scene-t.json", user)
    copy_model(root / "hidden" / "hidden-t.json", user)
    return user


def test_fine_prior_card_says_what_it_is_conditioned_on_and_which_coarse_prior_it_refines(trained):
    card = json.loads((trained / "fine-t.json").read_text(encoding="utf-8"))
    from cmrstudio.resources import resources_dir

    shipped = json.loads((resources_dir() / "models" / "layout-cmr.json").read_text(encoding="utf-8"))
    cond = card["conditioning"]
    assert card["kind"] == "layout" and cond["scheme"] == "layout-fine-v1" and cond["cell_px"] == 2
    assert card["frame"]["spacing_mm"] == 2.5 and len(cond["inputs"]) == card["architecture"]["options"]["cond_channels"] == 9
    assert cond["coarse_prior"] == {"name": "layout-cmr", "sha256": shipped["sha256"]}
    assert set(cond["heart_classes"]) == {"LV", "MYO", "RV"} and cond["heart_classes"]["LV"] == 4  # bright blood, as in bSSFP
    assert card["training"]["iterations"] == 6 and card["training"]["cond_drop"] == 0.0  # unguided: nothing to drop
    assert (trained.parent / "fine" / "samples" / "latest.png").exists()


def test_fine_prior_samples_one_class_a_cell_outside_beyond_the_scan_and_a_layout_per_seed(trained, monkeypatch, tmp_path):
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.models.layout import FineLayout, load_layout

    prior = load_layout(read_card(trained / "fine-t.json"))
    assert isinstance(prior, FineLayout) and prior.factor == 2
    m = np.zeros((128, 128), np.uint8)
    yy, xx = np.ogrid[:128, :128]
    m[(yy - 64) ** 2 + (xx - 60) ** 2 < 300] = 2
    m[(yy - 64) ** 2 + (xx - 60) ** 2 < 120] = 1
    inside = np.ones((128, 128), bool)
    inside[:, :20] = False  # a scan narrower than the scene
    a, b, a2 = (prior.scene_sample(m, inside, 0, s) for s in (1, 2, 1))
    assert a.shape == (5, 64, 64) and set(np.unique(a)) <= {0.0, 1.0} and np.allclose(a.sum(0), 1)
    assert np.array_equal(a, a2) and not np.array_equal(a, b)
    assert (a[0, :, :10] == 1).all() and (b[0, :, :10] == 1).all()
    lv_cells = (m == 1).reshape(64, 2, 64, 2).mean(axis=(1, 3)) >= 0.5  # cells mostly in the painted LV take the LV's usual class
    assert (a[prior.heart_classes["LV"]][lv_cells] == 1).all() and (b[prior.heart_classes["LV"]][lv_cells] == 1).all()
    with pytest.raises(CmrError, match="fine tissue-class prior; give the coarse prior"):
        load_layout(read_card(trained / "fine-t.json"), fine=False)
    # another version of the coarse prior installed than the one the fine prior was trained with: one sentence, naming both
    other = tmp_path / "other"
    copy_model(trained / "fine-t.json", other)
    doc = json.loads((other / "fine-t.json").read_text(encoding="utf-8"))
    doc["conditioning"]["coarse_prior"]["sha256"] = "0" * 64
    (other / "fine-t.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(CmrError, match=r"prior 'layout-cmr' installed \(.*layout-cmr.json\) is not the one the fine prior 'fine-t' was "
                                       r"trained with \(sha256 000000000000…\); install that one"):
        load_layout(read_card(other / "fine-t.json"))
    from cmrstudio.engine.scene import LayoutPrior  # the same for a scene model whose card names its prior's sha256

    monkeypatch.setenv("CMRSTUDIO_MODELS", str(trained))
    with pytest.raises(CmrError, match=r"prior 'fine-t' installed .* is not the one the model was trained with \(sha256 111111111111…"):
        LayoutPrior("fine-t", "1" * 64)


def test_scene_model_trained_on_fine_classes_renders_fully_synthetic_with_the_fine_prior(trained, monkeypatch):
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import _PRIORS

    card = json.loads((trained / "scene-t.json").read_text(encoding="utf-8"))
    cond = card["conditioning"]
    assert cond["layout_factor"] == 2 and cond["layout_prior"] == {"name": "fine-t", "cell_px": 2}
    assert "own tissue classes on cells of 2 px" in cond["layout_training"]
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(trained))
    _PRIORS.clear()
    r = open_renderer("scene-t")
    prior = r._prior()
    assert prior.info.name == "fine-t" and prior.factor == 2
    m = np.zeros((r.size, r.size), np.uint8)
    yy, xx = np.ogrid[:r.size, :r.size]
    m[(yy - 64) ** 2 + (xx - 60) ** 2 < 300] = 2
    m[(yy - 64) ** 2 + (xx - 60) ** 2 < 120] = 1
    a, b = (r.render_framed(m[None], "unknown", seed=[s])[0] for s in (3, 4))
    assert a.shape == (r.size, r.size) and np.isfinite(a).all() and np.abs(a - b).mean() > 1e-3
    # a model trained on 10 mm cells cannot render with a 2.5 mm prior: one sentence, naming both
    bad = dict(card, name="scene-8")
    bad["conditioning"] = dict(cond, layout_factor=8)
    (trained / "scene-8.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(CmrError, match="makes cells of 2 px, but 'scene-8' was trained on cells of 8 px"):
        open_renderer("scene-8")._prior()
    # a run trained on the fine prior's own classes cannot be resumed on the coarse prior's projection
    p = cli("train", "spade", "--preset", "scene-tiny", "--phantom", "6", "--batch", "2", "--threads", "1", "--steps", "3", "--resume",
            "--layout-prior", "layout-cmr", "--out", str(trained.parent / "scene"), "--name", "scene-t", check=False)
    assert p.returncode != 0 and "--layout-prior" in p.stderr and "layout-cmr" in p.stderr


def test_fine_training_windows_pair_the_slice_own_classes_with_its_heart_extent_and_coarse_projection():
    from cmrstudio.data.dataset import FineLayoutDataset, SceneDataset
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.models.layout import load_layout
    from cmrstudio.models.registry import get_model

    pca = load_layout(get_model("layout-cmr", kind="layout"))
    scenes = SceneDataset([phantom_case(i) for i in range(2)], augment=None, layout_prior=pca)
    ds = FineLayoutDataset(scenes, cells=48, factor=2, augment=False)
    s = ds.sample(0, fixed=True)
    x, cond, mask = s["x"], s["cond"], s["mask"]
    assert x.shape == (5, 48, 48) and cond.shape == (9, 48, 48) and mask.shape == (48, 48)
    assert np.allclose((x + 1).sum(0) / 2, 1) and np.allclose(cond[4:].sum(0), 1, atol=1e-3)  # fractions of the classes; coarse too
    heart = cond[:3].sum(0)
    assert heart[mask > 0].mean() > 0.9 and heart[mask == 0].mean() < 0.1  # the heart's fractions sit on its cells
    # the LV blood pool is bright in its own classes, and the projection says roughly the same there
    lv = mask == 1
    assert x[4][lv].mean() > 0 and cond[8][lv].mean() > cond[8][~lv].mean()
    ds.rng = np.random.default_rng(7)  # what a data-loading worker does: the windows then come from its own stream
    assert ds.scenes.rng is ds.rng
    with pytest.raises(CmrError, match="projected onto a coarse prior"):
        FineLayoutDataset(SceneDataset([phantom_case(0)], augment=None))


def test_frame_thresholds_band_the_heart_frame_and_keep_the_coarse_projection_of_the_scan_bands():
    """--class-thresholds frame: the bands come from the 160 mm heart frame of a real scan (the bundled Sunnybrook case),
    while the coarse prior, fit on whole-scan bands, is still given whole-scan bands to project."""
    from cmrstudio.data.dataset import SceneDataset
    from cmrstudio.data.scene import frame_region
    from cmrstudio.io import sample_case
    from cmrstudio.models.layout import load_layout
    from cmrstudio.models.registry import get_model

    pca = load_layout(get_model("layout-cmr", kind="layout"))
    cases = [sample_case("ED")]
    scan, frame = (SceneDataset(cases, augment=None, require_labels=(1, 2), layout_prior=pca, class_thresholds=t)
                   for t in ("scan", "frame"))
    assert len(scan) == len(frame) >= 4 and scan.class_thresholds == "scan" and frame.class_thresholds == "frame"
    changed = 0
    for i in range(len(scan)):
        region = frame_region(frame.insides[i].shape, frame.centres[i], 128) & frame.insides[i]
        assert region.sum() == 128 * 128 or not frame.insides[i].all()  # the heart frame, clipped to the scan
        a, b = scan.classes[i], frame.classes[i]
        bands = np.where(b == 0, 1, b)  # 'outside' is the darkest band where it touches the scan's edge
        assert a.shape == b.shape and set(np.unique(bands[region])) == {1, 2, 3, 4}  # all four bands inside the heart frame
        changed += int((a != b).mean() > 0.01)
        assert np.array_equal(scan.projected[i][0], frame.projected[i][0]) and scan.projected[i][1] == frame.projected[i][1]
    assert changed >= len(scan) // 2  # on most slices the frame's bands differ from the whole scan's
    with pytest.raises(CmrError, match="--class-thresholds 'bands' is not known; use scan or frame"):
        SceneDataset(cases, augment=None, class_thresholds="bands")


def test_a_fine_prior_trained_on_frame_thresholds_says_so_and_keeps_to_them(tmp_path):
    common = ["--phantom", "4", "--batch", "2", "--threads", "1", "--sample-every", "2", "--save-every", "2",
              "--preset", "layout-fine-tiny", "--size", "32", "--out", str(tmp_path / "f"), "--name", "f"]
    run("train", "flow", *common, "--steps", "2", "--class-thresholds", "frame")
    cond = json.loads((tmp_path / "f" / "f.json").read_text(encoding="utf-8"))["conditioning"]
    assert "heart frame" in cond["class_thresholds"] and cond["scheme"] == "layout-fine-v1"
    p = cli("train", "flow", *common, "--steps", "3", "--resume", check=False)  # without the option: 'scan'
    assert p.returncode != 0 and "--class-thresholds 'frame', not 'scan'" in p.stderr
    p = cli("train", "flow", "--preset", "lite", "--phantom", "2", "--steps", "1", "--class-thresholds", "frame",
            "--out", str(tmp_path / "lite"), check=False)
    assert p.returncode != 0 and "only scene and layout-fine presets" in p.stderr and not (tmp_path / "lite").exists()


def test_categorical_flow_velocity_lands_on_the_class_probabilities_and_learns_by_cross_entropy():
    import torch

    from cmrstudio.models.diffusion import PRESETS, CategoricalUNet, DiffusionConfig
    from cmrstudio.models.sampling import training_loss

    torch.manual_seed(0)
    net = CategoricalUNet(DiffusionConfig.from_dict(PRESETS["layout-fine-tiny"].to_dict())).eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)  # the output layer starts at zero: give it something to say
    x, cond, v = torch.randn(2, 5, 32, 32), torch.rand(2, 9, 32, 32), torch.zeros(2, dtype=torch.long)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        p = torch.softmax(net.logits(x, t, cond, v), 1)
        landed = x - t[:, None, None, None] * net(x, t, cond, v)  # an Euler step from t to 0
    assert torch.allclose(landed, 2 * p - 1, atol=1e-4) and not torch.allclose(p, torch.full_like(p, 0.2), atol=1e-3)
    x0 = torch.nn.functional.one_hot(torch.randint(5, (2, 32, 32)), 5).permute(0, 3, 1, 2).float() * 2 - 1
    loss = training_loss(net, "flow", x0, cond, v, t, torch.randn_like(x0))
    ce = -(((x0 + 1) / 2) * torch.log_softmax(net.logits((1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * torch.randn_like(x0), t, cond, v), 1)).sum(1).mean()
    assert 0.5 * np.log(5) < float(loss) < 3 * np.log(5) and abs(float(loss) - float(ce)) < 0.5


def _disc_mask(n: int) -> np.ndarray:
    m = np.zeros((n, n), np.uint8)
    yy, xx = np.ogrid[:n, :n]
    m[(yy - n // 2) ** 2 + (xx - n // 2 + 4) ** 2 < 300] = 2
    m[(yy - n // 2) ** 2 + (xx - n // 2 + 4) ** 2 < 120] = 1
    return m


def test_a_model_trained_with_hidden_heart_classes_renders_without_them_there(trained, monkeypatch):
    """--hide-heart-classes: the fully synthetic training windows and the model's own renders carry no tissue class on the heart
    or within the distance its card names, and the classes everywhere else; a model without it keeps the classes on the heart."""
    from scipy import ndimage

    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import _PRIORS

    for hidden in ("hidden-t", "hidden-flow-t"):
        card = json.loads((trained / f"{hidden}.json").read_text(encoding="utf-8"))
        assert card["conditioning"]["layout_hidden_near_heart_mm"] == 5.0
    assert "layout_hidden_near_heart_mm" not in json.loads((trained / "scene-t.json").read_text(encoding="utf-8"))["conditioning"]
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(trained))
    _PRIORS.clear()
    seen = {}
    for name in ("hidden-t", "hidden-flow-t", "scene-t"):
        r = open_renderer(name)
        steps = r._window_steps

        def spy(cond, *a, _name=name, _steps=steps, **kw):
            seen[_name] = cond[0].numpy().copy()
            return _steps(cond, *a, **kw)

        monkeypatch.setattr(r, "_window_steps", spy)
        m = _disc_mask(r.size)
        out = r.render_framed(m[None], "unknown", seed=[5])[0]
        assert np.isfinite(out).all()
    for name, cond in seen.items():
        heart = cond[:3].sum(0) > 0.5
        dist = ndimage.distance_transform_edt(~heart)  # the whole canvas is the scene: 1.25 mm pixels
        classes = cond[3:8].sum(0)
        if name.startswith("hidden"):
            assert (classes[dist <= 4.0] == 0).all()  # on the heart and within 5 mm (4 px): none
            assert np.allclose(classes[dist > 5.5], 1, atol=1e-4)  # beyond it: every cell's fractions, as the prior drew them
        else:
            assert np.allclose(classes[heart], 1, atol=1e-4)  # the classes reach into the heart
    # the training windows: fully synthetic ones hide them as the card says; in-patient windows have no classes anyway
    from cmrstudio.data.dataset import SceneDataset
    from cmrstudio.data.phantom import phantom_case

    ds = SceneDataset([phantom_case(i) for i in range(2)], augment=None, layout_factor=2, hide_layout_mm=5.0, mode="synthetic")
    plain = SceneDataset([phantom_case(i) for i in range(2)], augment=None, layout_factor=2, mode="synthetic")
    s, p = ds.sample(0, fixed=True), plain.sample(0, fixed=True)
    dist = ndimage.distance_transform_edt(s["mask"] == 0)
    assert (s["cond"][3:8][:, dist <= 4.0] == 0).all() and np.allclose(p["cond"][3:8].sum(0)[dist <= 4.0], 1, atol=1e-4)
    far = dist > 5.5
    assert np.array_equal(s["cond"][3:8][:, far], p["cond"][3:8][:, far]) and np.array_equal(s["cond"][:3], p["cond"][:3])
    # a run trained with hidden classes goes on only as it was trained
    again = cli("train", "spade", "--preset", "scene-tiny", "--phantom", "6", "--batch", "2", "--threads", "1", "--steps", "3", "--resume",
                "--layout-prior", str(trained.parent / "fine" / "fine-t.json"), "--out", str(trained.parent / "hidden"), "--name", "hidden-t",
                check=False)
    assert again.returncode != 0 and "--hide-heart-classes 5.0, not 0.0" in again.stderr
    again = cli("train", "flow", "--preset", "scene-tiny", "--phantom", "6", "--batch", "2", "--threads", "1", "--steps", "3", "--resume",
                "--layout-prior", str(trained.parent / "fine" / "fine-t.json"), "--out", str(trained.parent / "hidden-flow"),
                "--name", "hidden-flow-t", "--hide-heart-classes", "3", check=False)
    assert again.returncode != 0 and "--hide-heart-classes 5.0, not 3.0" in again.stderr
