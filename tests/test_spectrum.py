"""The spectrum gain of a step-wise scene model (``sampling.spectrum_gain``, :mod:`cmrstudio.models.spectrum`): fitted on
training patients by `cmrstudio train spectrum-gain`, applied to the finished image of every render, only inside what a
render in a patient's own slice repaints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cmrstudio.errors import CmrError
from tests.conftest import SHARED_DATA

HQ = "flow-cmr-fine-2step"


@pytest.fixture(scope="module")
def real():
    """Real framed heart slices (128 px) of the sample scan, both phases."""
    from cmrstudio.data.slices import framed_slices
    from cmrstudio.io import sample_case

    rows = framed_slices([sample_case("ED"), sample_case("ES")], 128, 1.25)
    return np.stack([im for _, ims, _ in rows for im in ims]).astype(np.float32)


def _band(f: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (f >= lo) & (f <= hi)


def test_a_fitted_gain_gives_blurred_slices_their_power_back_and_nothing_else(real):
    from scipy import ndimage

    from cmrstudio.models.spectrum import apply_gain, fit_gain, radial_power

    blurred = np.stack([ndimage.gaussian_filter(im, 1.0) for im in real])
    fit = fit_gain(real, blurred, strength=1.0, max_cycles=0.3)
    f, g = np.array(fit["cycles_per_px"]), np.array(fit["gain"])
    assert fit["slices"] == len(real) and len(f) == 65 and f[-1] == 0.5
    assert g[0] == 1.0 and np.all(g[f > 0.3] == 1.0) and np.all(g >= 1.0)  # no gain at DC nor above the limit
    assert g[_band(f, 0.15, 0.3)].min() > 1.3 and g.max() <= 3.0  # a Gaussian of 1 px halves power well below 0.3 cycles/px
    out = np.stack([apply_gain(im, (f, g)) for im in blurred])
    before = np.abs(np.log(radial_power(real) / radial_power(blurred)))[_band(f, 0.1, 0.3)].mean()
    after = np.abs(np.log(radial_power(real) / radial_power(out)))[_band(f, 0.1, 0.3)].mean()
    assert after < 0.4 * before, (before, after)  # strength 1: the real power, up to the clipping at [0, 1]
    assert abs(float(out.mean() - blurred.mean())) < 0.01 and out.min() >= 0 and out.max() <= 1
    flat = (np.array([0.0, 0.5]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(apply_gain(real[0], flat), real[0], atol=1e-5)  # gain 1: the image itself
    odd = real[0][:90, :77]  # any size and shape: a window in a patient's slice, a whole scene
    assert apply_gain(odd, (f, g)).shape == odd.shape
    half = np.array(fit_gain(real, blurred, strength=0.5, max_cycles=0.3)["gain"])
    below_cap = g < 3.0
    np.testing.assert_allclose(half[below_cap] ** 2, g[below_cap], rtol=1e-3)  # half-way in log power


@pytest.mark.parametrize("kw,said", [({"strength": 0.0}, "--strength 0.0 must be above 0"),
                                     ({"strength": 1.5}, "--strength 1.5 must be above 0 and at most 1"),
                                     ({"max_cycles": 0.6}, "--max-cycles 0.6 must be above 0 and at most 0.5")])
def test_bad_fit_settings_are_one_sentence(real, kw, said):
    from cmrstudio.models.spectrum import fit_gain

    with pytest.raises(CmrError, match=said):
        fit_gain(real, real, **kw)
    with pytest.raises(CmrError, match="must share one frame"):
        fit_gain(real, real[:, :64, :64])


@pytest.mark.parametrize("bad", [{"gain": [1, 2]}, {"cycles_per_px": [0, 0.5], "gain": [1, -2]},
                                 {"cycles_per_px": [0.2, 0.1], "gain": [1, 2]}, {"cycles_per_px": [0, 0.5], "gain": [1]},
                                 {"cycles_per_px": [0, 0.5], "gain": [1, 50]}, {"cycles_per_px": "rising", "gain": "no"}, [1, 2]])
def test_a_card_with_a_bad_spectrum_gain_is_refused_in_one_sentence(bad):
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.models.registry import get_model
    from cmrstudio.models.spectrum import check_gain

    assert check_gain(None, "x") is None
    info = get_model(HQ, kind="flow")
    card = json.loads(json.dumps(info.card))
    card["sampling"]["spectrum_gain"] = bad
    with pytest.raises(CmrError, match=r"The card .*flow-cmr-fine-2step.json names a sampling.spectrum_gain that is not a curve.*train spectrum-gain"):
        open_renderer(dataclasses.replace(info, card=card))


def test_the_hq_default_renders_with_its_gain_and_only_inside_what_it_repaints_in_a_patient():
    from cmrstudio.data.frame import frame_mask
    from cmrstudio.data.scene import repaint_region
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import SliceContext
    from cmrstudio.io import sample_case
    from cmrstudio.models.spectrum import apply_gain
    from cmrstudio.record import make_record

    r, off = open_renderer(HQ), open_renderer(HQ, spectrum_gain=False)
    spec = r.info.card["sampling"]["spectrum_gain"]
    f, g = r.spectrum
    assert spec["command"].startswith(f"cmrstudio train spectrum-gain {HQ} ") and spec["strength"] == 1.0
    assert spec["fitted_on"]["held_out_excluded"] == r.info.card["training"]["held_out_case_prefixes"]  # fitted on training patients
    assert g.max() > 1.5 and np.all(g[f > spec["max_cycles_per_px"]] == 1.0)
    assert r.describe()["sampler"] == "euler, averaged over 4 shifts with the tissue classes held midway, spectrum matched" and off.spectrum is None
    assert make_record(r, 1, "siemens").sampler.endswith("spectrum matched")
    assert make_record(off, 1, "siemens").sampler == "euler, averaged over 4 shifts with the tissue classes held midway"
    case = sample_case("ED")
    z = int(np.argmax((case.mask > 0).sum(axis=(1, 2))))
    frame = r.frame_for(case.mask, case.spacing, image=case.image)
    # fully synthetic: the whole scene, then the gain (both renderers draw the same tissue classes for the seed)
    scene = r.scene_of(frame)
    m = frame_mask(case.mask[z], scene.frame)
    with_gain, without = r.render_scene(scene, m, 0, 3), off.render_scene(scene, m, 0, 3)
    np.testing.assert_allclose(with_gain, apply_gain(without, r.spectrum), atol=1e-5)
    assert np.abs(with_gain - without).mean() > 0.003
    # in this patient: the scan's own pixels outside the repainted region, untouched; the gain inside it
    ctx = SliceContext("in-patient", case.image[z], case.mask[z])
    a, _ = r.render_slice(case.mask[z], frame, "siemens", 3, ctx)
    b, _ = off.render_slice(case.mask[z], frame, "siemens", 3, ctx)
    far = ~repaint_region([case.mask[z]], 20 / case.spacing[1])
    assert np.array_equal(a[far], case.image[z][far].astype(np.float32)) and np.array_equal(a[far], b[far])
    assert np.abs(a - b)[~far].max() > 0.01 * float(case.image[z].max())
    with pytest.raises(CmrError, match="'flow-cmr-2step' has no spectrum gain in its card; fit one with `cmrstudio train spectrum-gain`"):
        open_renderer("flow-cmr-2step", spectrum_gain=True)


def test_render_takes_the_card_gain_and_leaves_it_out_when_asked(tmp_path):
    import nibabel as nib
    from helpers import cli, run

    from cmrstudio.resources import sample_dir

    mask, scan = sample_dir() / "SCD0000101_ED_mask.nii.gz", sample_dir() / "SCD0000101_ED_image.nii.gz"
    outs = {}
    for name, extra in (("with", []), ("without", ["--no-spectrum-gain"])):
        p = run("render", str(mask), "--context", str(scan), "--model", HQ, "--seed", "2", "--out", str(tmp_path / f"{name}.nii.gz"), *extra)
        assert ("spectrum matched" in p.stdout) == (name == "with"), p.stdout
        outs[name] = np.asarray(nib.load(str(tmp_path / f"{name}.nii.gz")).dataobj, np.float32)
    img = np.asarray(nib.load(str(scan)).dataobj, np.float32)
    untouched = np.isclose(outs["without"], img)  # the scan's own pixels, outside what was repainted
    assert 0.5 < untouched.mean() < 0.99 and np.isclose(outs["with"], img)[untouched].mean() > 0.995
    assert not np.allclose(outs["with"][~untouched], outs["without"][~untouched])  # the gain, inside
    p = cli("render", str(mask), "--no-spectrum-gain", "--out", str(tmp_path / "never.nii.gz"), check=False)  # the default: SPADE
    assert p.returncode == 2 and "--no-spectrum-gain applies to diffusion and flow models" in p.stderr
    assert not (tmp_path / "never.nii.gz").exists()


@pytest.mark.skipif(not (SHARED_DATA / "acdc").exists(), reason="needs ../shared/data (real scans of training patients) to fit on")
def test_train_spectrum_gain_fits_on_training_patients_and_writes_the_card(tmp_path, monkeypatch):
    from helpers import cli, run

    from cmrstudio.models.registry import get_model

    shipped = get_model(HQ, kind="flow")
    models = tmp_path / "models"
    models.mkdir()
    card = json.loads(shipped.card_path.read_text(encoding="utf-8"))
    card["name"] = "hq-copy"
    card["sampling"].pop("spectrum_gain")
    (models / "hq-copy.json").write_text(json.dumps(card), encoding="utf-8")
    (models / card["weights"]).symlink_to(shipped.weights_path)
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(models))
    data = [a for d in ("acdc", "mnms", "sunnybrook") for a in ("--data", str(SHARED_DATA / d))]
    p = run("train", "spectrum-gain", "hq-copy", *data, "--slices", "16", "--strength", "0.8", "--threads", "2")
    assert "spectrum gain fitted on 16 slices (strength 0.8" in p.stdout, p.stdout
    spec = json.loads((models / "hq-copy.json").read_text(encoding="utf-8"))["sampling"]["spectrum_gain"]
    assert spec["slices"] == 16 and spec["strength"] == 0.8 and spec["command"].startswith("cmrstudio train spectrum-gain hq-copy --data")
    assert spec["fitted_on"]["held_out_excluded"] == card["training"]["held_out_case_prefixes"] and spec["fitted_on"]["cases"] > 100
    assert max(spec["gain"]) > 1.2  # the 2-step model's renders lack the training slices' finer power
    assert json.loads(shipped.card_path.read_text(encoding="utf-8"))["sampling"]["spectrum_gain"]["slices"] == 120  # the copy only
    for args, said in ((("hq-copy", *data, "--slices", "4"), "--slices 4 must be at least 16"),
                       (("hq-copy", *data, "--strength", "0"), "--strength 0.0 must be above 0"),
                       (("spade-cmr", *data), "'spade-cmr' is a spade model, not a flow or diffusion model"),
                       (("hq-copy",), "Give --data: real scans with labels")):
        bad = cli("train", "spectrum-gain", *args, check=False)
        assert bad.returncode != 0 and said in bad.stderr, bad.stderr
