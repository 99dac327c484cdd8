"""Whole slices: the scene frame, background tissue classes, the tissue-class prior, and renders in this
patient and fully synthetic with the shipped scene models (real weights, the real sample scan)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrstudio.errors import CmrError


@pytest.fixture(scope="module")
def sample():
    from cmrstudio.io import sample_case

    c = sample_case("ED")
    return c, int(np.argmax((c.mask > 0).sum(axis=(1, 2))))


@pytest.fixture(scope="module")
def live():
    from cmrstudio.engine.factory import open_renderer

    r = open_renderer("spade-cmr")
    if not r.scene:
        pytest.fail("the shipped spade-cmr is not a scene model: whole-slice renders are missing")
    return r


@pytest.fixture(scope="module")
def hq():
    from cmrstudio.engine.factory import open_renderer

    return open_renderer("flow-cmr", steps=3)


# -- the scene frame and tissue classes -----------------------------------------------------------------

def test_scene_covers_the_whole_scan_and_holds_the_heart_frame_as_an_exact_window(sample):
    from cmrstudio.data.frame import make_frame, to_frame
    from cmrstudio.data.scene import scene_for

    c, z = sample
    heart = make_frame(c, size=128, spacing_mm=1.25)
    sc = scene_for(heart)
    assert sc.frame.size % 32 == 0 and sc.frame.step == heart.step
    g = sc.frame.coords()
    ny, nx = c.shape[1:]
    assert g[0].min() <= 0 and g[0].max() >= ny - 1 and g[1].min() <= 0 and g[1].max() >= nx - 1  # every native pixel is covered
    assert np.allclose(sc.crop(g), heart.coords(), atol=1e-9)  # the heart frame is a window of the scene, pixel for pixel
    assert np.allclose(sc.crop(to_frame(c, sc.frame).image), to_frame(c, heart).image, atol=1e-5)
    inside = sc.inside_scan()
    assert 0.5 < inside.mean() < 1.0 and not inside[0, -1]  # the scan's grid plus padding


def test_tissue_classes_find_the_body_outline_and_the_bright_blood(sample):
    from cmrstudio.data.frame import make_frame, to_frame
    from cmrstudio.data.scene import LAYOUT_CLASSES, class_fractions, scene_for, tissue_classes

    c, z = sample
    sc = scene_for(make_frame(c, size=128, spacing_mm=1.25))
    fc = to_frame(c, sc.frame)
    cls = tissue_classes(fc.image[z], sc.inside_scan())
    assert set(np.unique(cls)) <= set(range(len(LAYOUT_CLASSES))) and len(np.unique(cls)) == 5
    assert (cls[~sc.inside_scan()] == 0).all()  # padding is outside the body
    assert cls[0, 0] == 0 and np.mean(cls[fc.mask[z] == 1] >= 3) > 0.7  # corners outside; LV blood bright in bSSFP
    frac = class_fractions(cls)
    assert frac.shape == (5, sc.frame.size // 8, sc.frame.size // 8) and np.allclose(frac.sum(0), 1)


def test_a_render_repaints_the_margin_around_what_changed_and_a_narrow_band_around_the_rest():
    """edit_region: the painted heart with the scan's own outline gets a band of UNCHANGED_MARGIN_MM; what the painter
    changed (a label moved, added or erased) gets the whole margin; a scan with no labels of its own the whole margin
    around the painted heart; the band is never wider than the margin."""
    from scipy import ndimage

    from cmrstudio.data.scene import edit_region

    own = np.zeros((96, 96), np.uint8)
    own[30:60, 30:60] = 2
    own[36:54, 36:54] = 1
    dist_heart = ndimage.distance_transform_edt(own == 0)
    same = edit_region(own, own.copy(), 8.0, 4.0)
    assert np.array_equal(same, dist_heart <= 4.0)  # nothing changed: the heart and 4 px around it
    grown = own.copy()
    grown[30:60, 60:66] = 2  # the wall painted 6 px thicker on one side
    r = edit_region(grown, own, 8.0, 4.0)
    changed = ndimage.distance_transform_edt(grown == own)  # px from a changed pixel
    assert np.array_equal(r, (ndimage.distance_transform_edt((grown == 0) & (own == 0)) <= 4.0) | (changed <= 8.0))
    assert r[45, 66 + 7] and not r[45, 30 - 6] and not same[45, 66 + 7]  # room beside the change, the band elsewhere
    erased = own.copy()
    erased[erased == 2] = 0  # the myocardium erased: the old wall and 8 px around it
    assert edit_region(erased, own, 8.0, 4.0)[45, 30 - 7] and edit_region(erased, own, 8.0, 4.0).sum() > same.sum()
    assert np.array_equal(edit_region(own, None, 8.0, 4.0), dist_heart <= 8.0)  # no own labels: the whole margin
    assert np.array_equal(edit_region(own, own, 3.0, 4.0), dist_heart <= 3.0)  # a margin under the band: the margin


def test_repaint_region_covers_old_and_new_heart_with_the_margin():
    from cmrstudio.data.scene import repaint_region

    old = np.zeros((64, 64), np.uint8)
    old[20:30, 20:30] = 1
    new = np.zeros_like(old)
    new[35:40, 35:40] = 2
    r = repaint_region([old, new, None], 3.0)
    assert r[old > 0].all() and r[new > 0].all() and r[17, 25] and not r[16, 25] and not r[5, 5]


# -- the tissue-class prior ---------------------------------------------------------------------------------

def test_layout_prior_fits_projects_samples_and_round_trips(tmp_path):
    from cmrstudio.models.checkpoint import read_card, save_model
    from cmrstudio.models.layout import N_MAPS, LayoutConfig, LayoutPCA, load_layout

    rng = np.random.default_rng(0)
    cfg = LayoutConfig(cells=8, components=4)
    n = cfg.cells ** 2
    # layouts: a body disc of random radius (tissue 'mid-dark') in 'outside', the heart at the centre, all inside the scan
    yy, xx = np.mgrid[:8, :8] - 3.5
    vecs = []
    for _ in range(60):
        body = (yy ** 2 + xx ** 2) <= rng.uniform(2, 4) ** 2
        m = np.zeros((N_MAPS, 8, 8), np.float32)
        m[0], m[2] = ~body, body
        m[5, 3:5, 3:5] = 1
        m[8] = 1
        vecs.append(m.reshape(-1))
    prior = LayoutPCA.fit(np.stack(vecs), cfg)
    proj = prior.project(vecs[0].reshape(N_MAPS, 8, 8))
    assert np.allclose(proj.sum(0), 1, atol=1e-4) and np.abs(proj[2] - vecs[0].reshape(N_MAPS, 8, 8)[2]).mean() < 0.2
    obs = vecs[0].reshape(N_MAPS, 8, 8)[5:].copy()
    a, b, a2 = prior.sample(obs, 1), prior.sample(obs, 2), prior.sample(obs, 1)
    assert np.array_equal(a, a2) and not np.allclose(a, b)  # a seed is a layout; another seed another
    obs[-1, :, :2] = 0  # two columns outside the scan's grid: nothing but 'outside' there
    assert (prior.sample(obs, 3)[0, :, :2] == 1).all()
    info = save_model(tmp_path, "lay", prior.state(), {"kind": "layout", "architecture": {"class": "LayoutPCA", "options": cfg.to_dict()}})
    back = load_layout(read_card(info.card_path))
    assert np.allclose(back.sample(obs, 5), prior.sample(obs, 5), atol=1e-3)  # stored as float32
    info.weights_path.write_bytes(info.weights_path.read_bytes()[:-8] + b"damaged!")
    with pytest.raises(CmrError, match="does not match the sha256"):
        load_layout(read_card(info.card_path))


def test_shipped_layout_prior_makes_a_body_around_the_heart(live, sample):
    from cmrstudio.data.frame import frame_mask

    c, z = sample
    frame = live.frame_for(c.mask, c.spacing, image=c.image)
    sc = live.scene_of(frame)
    m = frame_mask(c.mask[z], sc.frame)
    prior = live._prior()
    f = prior.factor  # the live model's prior: layout-cmr-fine, 2-px (2.5 mm) cells
    assert f == live.info.card["conditioning"]["layout_factor"] == 2
    lays = [prior.sample(m, sc.inside_scan(), 0, s) for s in range(3)]
    cells = sc.frame.size // f
    for lay in lays:
        assert lay.shape == (5, cells, cells) and np.allclose(lay.sum(0), 1, atol=1e-3)
        heart_cells = np.argwhere(m[::f, ::f] > 0)
        assert lay[0][tuple(heart_cells.T)].mean() < 0.2  # the heart is inside the body, not in the air
        assert lay[0][0, :].mean() > 0.5 or lay[0][-1, :].mean() > 0.5  # and the body ends before the scene does
        # the painted structures take their labels' usual classes (bright blood pool, mid-dark muscle), as the prior was
        # trained and measured; a card without heart_classes lets the prior draw them, and the painted RV fades away
        blocks = m.reshape(cells, f, cells, f)
        for lab, cls in ((1, 4), (2, 2), (3, 3)):
            whole = (blocks == lab).all(axis=(1, 3))  # cells that lie wholly in the structure
            assert whole.any() or lab != 1
            assert (lay[cls][whole] == 1).all()
    assert np.abs(lays[0] - lays[1]).mean() > 0.01  # different seeds: different bodies


# -- rendering whole slices ------------------------------------------------------------------------------

def test_in_patient_render_keeps_the_scan_outside_the_repainted_region(live, sample):
    from cmrstudio.data.scene import repaint_region
    from cmrstudio.engine.scene import SliceContext

    c, z = sample
    frame = live.frame_for(c.mask, c.spacing, image=c.image)
    painted = c.mask[z].copy()
    painted[painted == 2] = 1  # the myocardium painted over: a thin-walled heart
    ctx = SliceContext("in-patient", c.image[z], c.mask[z], margin_mm=10)
    native, framed = live.render_slice(painted, frame, c.vendor, 3, ctx)
    assert native.shape == c.shape[1:] and framed.shape == (128, 128) and np.isfinite(native).all()
    px = 10 / c.spacing[1]
    region = repaint_region([c.mask[z], painted], px + 2)  # + the interpolation ring of the frame's resampling
    assert np.array_equal(native[~region], c.image[z][~region])  # the patient's own pixels, untouched
    inner = repaint_region([c.mask[z]], 0)
    assert np.abs(native[inner] - c.image[z][inner]).mean() > 0.02 * np.ptp(c.image[z])  # the heart was rendered anew
    lo, hi = frame.intensity
    assert lo - 0.05 * (hi - lo) <= native[inner].min() and native[inner].max() <= hi + 0.05 * (hi - lo)  # rendered in the scan's own units
    # the scan's own outline painted unchanged: only a 5 mm band around the heart is repainted, not the 10 mm margin,
    # which the painted change above took (its myocardium changed, so the ring beyond its outline was repainted)
    same, _ = live.render_slice(c.mask[z], frame, c.vendor, 3, ctx)
    band = repaint_region([c.mask[z]], 5 / c.spacing[1] + 2)
    assert np.array_equal(same[~band], c.image[z][~band]) and not np.array_equal(same[inner], c.image[z][inner])
    beyond = repaint_region([c.mask[z]], 10 / c.spacing[1] - 1) & ~band
    assert (native[beyond] != c.image[z][beyond]).mean() > 0.5


def test_fully_synthetic_render_uses_no_real_pixel_and_fills_the_field_of_view(live, hq, sample):
    from cmrstudio.engine.scene import SliceContext

    c, z = sample
    for r in (live, hq):
        frame = r.frame_for(c.mask, c.spacing)  # no scan at all: intensities in [0, 1]
        a, fa = r.render_slice(c.mask[z], frame, "ge", 5, SliceContext("synthetic"))
        _, fb = r.render_slice(c.mask[z], r.frame_for(c.mask, c.spacing, image=c.image), "ge", 5, SliceContext("synthetic"))
        assert np.allclose(fa, fb, atol=1e-5)  # the same mask and seed: the same image, whatever scan is open
        assert a.shape == c.shape[1:] and (a > 0.05).mean() > 0.3  # a body fills much of the field of view, not only the heart crop
        assert np.abs(r.render_slice(c.mask[z], frame, "ge", 6, SliceContext("synthetic"))[0] - a).mean() > 0.01  # another seed


def test_live_edits_in_synthetic_surroundings_repaint_only_around_the_heart(live, sample):
    from cmrstudio.data.scene import repaint_region
    from cmrstudio.engine.scene import SliceContext

    c, z = sample
    frame = live.frame_for(c.mask, c.spacing)
    ctx = SliceContext("synthetic", key=("test", z))
    first, _ = live.render_slice(c.mask[z], frame, "ge", 9, ctx)  # makes and keeps the surroundings
    edited = c.mask[z].copy()
    edited[edited == 3] = 0  # the RV erased
    second, _ = live.render_slice(edited, frame, "ge", 9, ctx)
    far = ~repaint_region([c.mask[z]], 10 / c.spacing[1] + 2)
    assert np.array_equal(first[far], second[far]) and not np.array_equal(first, second)
    live.forget_scenes()


def test_kept_surroundings_are_the_most_recently_used_few(live, sample, monkeypatch):
    """The renderer keeps the synthetic surroundings of its last ``scene_cache_size`` slices, the least recently used
    dropped first: a slice painted again keeps its body (a window render), one pushed out draws a new scene."""
    from cmrstudio.engine.scene import Kept, SliceContext

    kept = Kept(lambda: 2)
    for k in "abc":
        kept.put(k, k.upper())
        kept.get("a")  # "a" used after every put: "b" is the least recently used when "c" comes
    assert (kept.get("a"), kept.get("b"), kept.get("c"), len(kept)) == ("A", None, "C", 2)
    c, z = sample
    frame = live.frame_for(c.mask, c.spacing)
    vi = live.resolve_vendor("siemens")[0]
    monkeypatch.setattr(live, "scene_cache_size", 2)
    live.forget_scenes()
    ctx = {k: SliceContext("synthetic", key=("kept test", k)) for k in range(3)}
    for k in (0, 1):
        live.render_slice(c.mask[z], frame, "siemens", 5, ctx[k])
    assert live.plan(c.mask[z], frame, ctx[0], vi, 5).hole is not None  # slice 0 kept (and now the most recently used)
    live.render_slice(c.mask[z], frame, "siemens", 5, ctx[2])  # a third slice pushes out slice 1, not slice 0
    assert live.plan(c.mask[z], frame, ctx[0], vi, 5).hole is not None and live.plan(c.mask[z], frame, ctx[2], vi, 5).hole is not None
    assert live.plan(c.mask[z], frame, ctx[1], vi, 5).hole is None  # a whole scene again
    live.forget_scenes()
    assert live.plan(c.mask[z], frame, ctx[0], vi, 5).hole is None


def test_live_renders_put_back_only_their_window_and_equal_putting_back_the_whole_scene(live, sample):
    """The live path resamples only the repainted window back into the scan (and keeps the synthetic surroundings in
    the scan's grid): the result must be what putting the whole scene back gives, in this patient and fully synthetic."""
    from cmrstudio.data.frame import Frame, from_frame
    from cmrstudio.engine.scene import SliceContext, _full

    c, z = sample
    frame = live.frame_for(c.mask, c.spacing, image=c.image)
    edited = c.mask[z].copy()
    edited[(edited == 0) & (np.roll(c.mask[z], 6, axis=1) == 3)] = 3  # the RV grown sideways
    for ctx in (SliceContext("in-patient", c.image[z], c.mask[z]), SliceContext("synthetic", key=("window test", z))):
        live.forget_scenes()
        live.render_slice(c.mask[z], frame, "siemens", 4, ctx)  # the synthetic surroundings are made and kept
        native, _ = live.render_slice(edited, frame, "siemens", 4, ctx)
        plan = live.plan(edited, frame, ctx, live.resolve_vendor("siemens")[0], 4)
        assert plan.hole is not None and plan.window[2] < plan.scene.frame.size  # an edit: a window, not the whole scene
        img = list(live._run(plan, live.resolve_vendor("siemens")[0], 4))[-1][2]
        sc = plan.scene.frame
        whole = from_frame(_full(plan, img), sc, kind="image")
        if ctx.mode == "in-patient":
            w = np.clip(from_frame(plan.hole.astype(np.float32), Frame(sc.size, sc.native_shape, sc.origin, sc.step, None, None)), 0, 1)
            whole = c.image[z] * (1 - w) + whole * w
        assert np.allclose(native, whole, atol=1e-4), (ctx.mode, float(np.abs(native - whole).max()))
        assert not np.allclose(native, c.image[z], atol=1e-3)  # the edit was rendered
    live.forget_scenes()


def test_bench_live_splits_the_network_from_what_is_around_it(live):
    from cmrstudio.engine.bench import bench_live

    res = bench_live(model="spade-cmr", n=4, warmup=1)
    assert set(res["modes"]) == {"in-patient", "synthetic"}
    for m in res["modes"].values():
        assert m["n"] == 4 and 0 < m["around_network_p50_ms"] < m["p50_ms"]
        assert m["windows"] and all(w % 16 == 0 for w in m["windows"])
    assert res["modes"]["synthetic"]["scene_ms"] > 0


def test_render_framed_in_patient_and_synthetic_and_heart_crop_models_refuse_patients(live, sample):
    from cmrstudio.data.frame import to_frame
    from cmrstudio.engine.factory import open_renderer

    c, z = sample
    fc = to_frame(c, live.frame_for(c.mask, c.spacing, image=c.image))
    zs = [z, z - 1]
    syn = live.render_framed(fc.mask[zs], "ge", seed=[1, 2])
    pat = live.render_framed(fc.mask[zs], "ge", seed=[1, 2], context=fc.image[zs])
    assert syn.shape == pat.shape == (2, 128, 128)
    from cmrstudio.data.scene import repaint_region

    far = ~repaint_region([fc.mask[z]], 5 / 1.25 + 1)  # the masks are the images' own: a 5 mm band around the heart
    assert np.allclose(pat[0][far], fc.image[z][far], atol=1e-6) and not np.allclose(syn[0][far], fc.image[z][far], atol=0.05)
    with pytest.raises(CmrError, match="one framed image per mask"):
        live.render_framed(fc.mask[zs], "ge", seed=[1, 2], context=fc.image[:1])


def test_render_records_say_how_and_from_what_a_render_was_made(live, tmp_path, sample):
    from cmrstudio.engine.scene import SliceContext
    from cmrstudio.record import Render, make_record

    c, z = sample
    frame = live.frame_for(c.mask, c.spacing, image=c.image)
    ctx = SliceContext("in-patient", c.image[z], c.mask[z], margin_mm=12)
    native, framed = live.render_slice(c.mask[z], frame, "ge", 4, ctx)
    rec = make_record(live, 4, "ge", ctx, seconds=0.05)
    assert rec.mode == "in-patient" and rec.derived_from_patient and rec.margin_mm == 12 and rec.band_mm == 5 and rec.sampler == "one-step" and rec.steps == 1
    assert rec.model_sha256 == live.info.card["sha256"]
    Render(native, framed, c.mask[z], frame, rec).save(tmp_path, "r1")
    side = json.loads((tmp_path / "r1.json").read_text(encoding="utf-8"))["source"]
    assert side["derived_from_patient"] is True and side["synthetic"] is False and side["render"]["mode"] == "in-patient"
    back = Render.load(tmp_path, "r1")
    assert back.record == rec and np.allclose(back.image, native, atol=1e-3)
    syn = make_record(live, 4, "ge", SliceContext("synthetic"))
    assert not syn.derived_from_patient and syn.margin_mm is None


def test_hq_job_renders_in_patient_step_by_step(hq, sample):
    from cmrstudio.engine.hq import JobQueue
    from cmrstudio.engine.scene import SliceContext

    c, z = sample
    frame = hq.frame_for(c.mask, c.spacing, image=c.image)
    steps = []
    with JobQueue(hq, on_progress=lambda j: steps.append(j.step)) as q:
        jid = q.submit(c.mask[z], frame, "ge", 2, steps=3, context=SliceContext("in-patient", c.image[z], c.mask[z]))
        job = q.wait(jid, 120)
    assert job.status == "done", job.error
    assert steps == [1, 2, 3] and job.result.record.mode == "in-patient" and job.result.record.steps == 3
    far = job.result.image != c.image[z]
    assert 0.01 < far.mean() < 0.5  # only the region around the heart is new


def test_cli_render_in_patient_and_fully_synthetic(tmp_path):
    import nibabel as nib

    from helpers import cli, run
    from cmrstudio.resources import sample_dir

    mask = sample_dir() / "SCD0000101_ED_mask.nii.gz"
    scan = sample_dir() / "SCD0000101_ED_image.nii.gz"
    p = run("render", str(mask), "--context", str(scan), "--out", str(tmp_path / "pat.nii.gz"))
    assert "in this patient" in p.stdout and "derived from a patient scan" in p.stdout
    assert "bundled segmenter" in p.stderr  # the image file alone has no segmentation: its heart was found and repainted
    p = run("render", str(mask), "--out", str(tmp_path / "syn.nii.gz"), "--seed", "3")
    assert "fully synthetic, the whole field of view" in p.stdout
    img, pat, syn = (np.asarray(nib.load(str(f)).dataobj) for f in (scan, tmp_path / "pat.nii.gz", tmp_path / "syn.nii.gz"))
    assert pat.shape == syn.shape == img.shape
    same = np.isclose(pat, img)
    assert 0.5 < same.mean() < 0.99 and not np.isclose(syn, img).mean() > 0.5
    p = cli("render", str(mask), "--context", str(sample_dir() / "SCD0000101_ES_image.nii.gz"), "--out", str(tmp_path / "x.nii.gz"),
            "--model", "nope", check=False)
    assert p.returncode == 2 and "No model is named 'nope'" in p.stderr
    # from a mask file to an export with the command line alone: a case that says how it was made
    run("render", str(mask), "--context", str(scan), "--case-out", str(tmp_path / "cases"), "--seed", "2")
    run("render", str(mask), "--case-out", str(tmp_path / "cases"), "--seed", "3")
    side = json.loads((tmp_path / "cases" / "SCD0000101_ED_mask_s2.json").read_text(encoding="utf-8"))["source"]
    assert side["render"]["mode"] == "in-patient" and side["derived_from_patient"] and side["render"]["seed"] == 2
    run("export", str(tmp_path / "cases"), str(tmp_path / "exp"), "--format", "nifti")
    listing = json.loads((tmp_path / "exp" / "export.json").read_text(encoding="utf-8"))
    # neutral ids; both derived from the patient: s2 rendered in the scan, s3 from the scan's own segmentation (the sample's mask)
    assert listing["cases"] == ["r0001", "r0002"] and listing["derived_from_patient"] == ["r0001", "r0002"]
    assert json.loads((tmp_path / "exp" / "r0002.json").read_text(encoding="utf-8"))["mask_origin"] == "patient"
    p = cli("render", str(mask), check=False)
    assert p.returncode == 2 and "--case-out" in p.stderr
