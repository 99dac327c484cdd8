"""SPADE: training, checkpoints and cards, registry, live engine, CLI render, bad inputs."""

import json
import threading

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cmrstudio.data.phantom import phantom_case
from cmrstudio.engine.live import LiveEngine, Renderer
from cmrstudio.errors import CmrError
from cmrstudio.io import write_volume
from cmrstudio.models.checkpoint import FORMAT_VERSION, read_card, sha256_file, verify
from cmrstudio.models.registry import build_model, get_model, list_models
from cmrstudio.models.spade import PRESETS, MultiScaleDiscriminator, SpadeConfig, SpadeGenerator, d_hinge, g_hinge, onehot, region_weights
from cmrstudio.resources import resources_dir
from cmrstudio.train.spade import SpadeTrainer, TrainOptions


from conftest import SMALL, shared
from helpers import cli, copy_model, run

def test_generator_and_discriminator_shapes_and_vendor_conditioning():
    cfg = SpadeConfig(size=64)
    g, d = SpadeGenerator(cfg).eval(), MultiScaleDiscriminator(cfg)
    mask = torch.from_numpy(phantom_case(seed=1, n_slices=2, shape=(64, 64)).mask.astype(np.int64))
    oh = onehot(mask)
    z = torch.randn(1, cfg.z_dim).expand(2, -1)
    # SPADE's gamma/beta start at zero; perturb so the vendor path matters
    torch.manual_seed(0)
    for p in g.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    with torch.no_grad():
        a = g(oh, torch.tensor([0, 0]), z)
        b = g(oh, torch.tensor([2, 2]), z)
    assert a.shape == (2, 1, 64, 64) and float(a.abs().max()) <= 1.0
    assert float((a - b).abs().mean()) > 1e-3  # vendor changes the picture
    feats = d(a, oh, torch.tensor([0, 0]))
    assert len(feats) == cfg.num_d and feats[1][-1].shape[-1] < feats[0][-1].shape[-1]


def test_training_loss_falls_and_writes_samples_and_card(tiny_run):
    hist = tiny_run.history
    first, last = hist[0], hist[-1]
    assert last["lowpass"] < 0.7 * first["lowpass"], (first, last)  # the generator learns the layout
    samples = sorted((tiny_run.out / "samples").glob("step_*.png"))
    assert [p.name for p in samples][:2] == ["step_000000.png", "step_000020.png"]
    from PIL import Image

    grid = np.asarray(Image.open(tiny_run.out / "samples" / "latest.png"))
    assert grid.shape[0] == 4 * 64 and grid[2 * 64:].std() > 5  # mask row, real row, two rendered rows
    card = json.loads((tiny_run.out / "tiny.json").read_text(encoding="utf-8"))
    assert card["training"]["iterations"] == 60 and card["training"]["data"][0]["dataset"] == "phantom"
    assert card["training"]["data"][0]["slices"] == len(tiny_run.ds)
    assert card["sha256"] == sha256_file(tiny_run.out / "tiny.safetensors")
    assert card["frame"]["size"] == 64 and card["architecture"]["options"]["size"] == 64
    assert set(card["vendors_trained"]) == {"siemens", "philips", "ge", "canon", "unknown"}
    assert len((tiny_run.out / "log.jsonl").read_text(encoding="utf-8").splitlines()) == 60 // 5


def test_resume_continues_from_saved_step(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(tiny_run.out, out)
    with pytest.raises(CmrError, match="--resume"):
        SpadeTrainer(TrainOptions(out=str(out), name="tiny", steps=70, **SMALL))
    with pytest.raises(CmrError, match="--phantom 4, not 5"):
        SpadeTrainer(TrainOptions(out=str(out), name="tiny", steps=70, resume=True, **{**SMALL, "phantom": 5}))
    tr = SpadeTrainer(TrainOptions(out=str(out), name="tiny", steps=70, resume=True, **SMALL))
    assert tr.step == 60
    for mine, theirs in ((tr.G, tiny_run.G), (tr.D, tiny_run.D), (tr.G_ema, tiny_run.G_ema)):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    adam = tr.opt_g.state_dict()["state"]
    assert adam and all(int(st["step"]) == 60 for st in adam.values())
    assert torch.equal(tr.rng.get_state(), tiny_run.rng.get_state())  # the random streams go on, not restart
    tr.run(progress=False)
    assert tr.step == 70 and json.loads((out / "tiny.json").read_text(encoding="utf-8"))["training"]["iterations"] == 70


def test_checkpoint_roundtrip_rebuilds_the_same_network(tiny_run):
    info = read_card(tiny_run.out / "tiny.safetensors")
    verify(info)
    net = build_model(info)
    oh = onehot(torch.from_numpy(tiny_run.ds.masks[:2].astype(np.int64)))
    z = torch.randn(2, net.cfg.z_dim)
    v = torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.allclose(net(oh, v, z), tiny_run.G_ema.eval()(oh, v, z), atol=1e-6)


def test_damaged_models_are_refused_with_one_sentence(tiny_run, tmp_path):
    # checksum mismatch: one byte changed in the weights
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "flip")
    w = card.with_suffix(".safetensors")
    b = bytearray(w.read_bytes())
    b[-10] ^= 0xFF
    w.write_bytes(bytes(b))
    with pytest.raises(CmrError, match="does not match the sha256"):
        build_model(read_card(card))
    # corrupt file whose card checksum matches it: not a safetensors file
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "trunc")
    w = card.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:1000])
    d = json.loads(card.read_text(encoding="utf-8"))
    d["sha256"] = sha256_file(w)
    card.write_text(json.dumps(d))
    with pytest.raises(CmrError, match="not a readable safetensors"):
        build_model(read_card(card))
    # written by a newer cmrstudio
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "newer")
    d = json.loads(card.read_text(encoding="utf-8"))
    d["format_version"] = FORMAT_VERSION + 1
    d["cmrstudio_version"] = "9.0.0"
    card.write_text(json.dumps(d))
    with pytest.raises(CmrError, match="written by cmrstudio 9.0.0 .*update cmrstudio"):
        read_card(card)
    # card is not JSON
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "badjson")
    card.write_text("{not json")
    with pytest.raises(CmrError, match="not valid JSON"):
        read_card(card)
    # through the CLI: exit 2, one line naming the file, no traceback
    p = cli("render", str(tmp_path / "x.nii.gz"), "--model", str(tmp_path / "flip" / "tiny.json"), "--out", str(tmp_path / "o.nii.gz"), check=False)
    assert p.returncode == 2  # the mask is missing: reported before the model is loaded
    mask = tmp_path / "m_gt.nii.gz"
    write_volume(mask, phantom_case(seed=2, n_slices=2, shape=(64, 64)).mask, np.diag([8, 1.5, 1.5, 1.0]))
    p = cli("render", str(mask), "--model", str(tmp_path / "flip" / "tiny.json"), "--out", str(tmp_path / "o.nii.gz"), check=False)
    assert p.returncode == 2 and "does not match the sha256" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.nii.gz").exists()


def test_registry_finds_user_and_plugin_models(tiny_run, tmp_path, monkeypatch):
    user = tmp_path / "user"
    copy_model(tiny_run.out / "tiny.json", user)
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(user))
    # a plugin: a real distribution's entry point in the cmrstudio.generators group
    plug = tmp_path / "plug"
    (plug / "models").mkdir(parents=True)
    copy_model(tiny_run.out / "tiny.json", plug / "models")
    d = json.loads((plug / "models" / "tiny.json").read_text(encoding="utf-8"))
    d["name"] = "plugged"
    (plug / "models" / "plugged.json").write_text(json.dumps({**d, "weights": "tiny.safetensors"}))
    (plug / "models" / "tiny.json").unlink()
    (plug / "cmr_plug.py").write_text(f"def models():\n    return {str(plug / 'models')!r}\n")
    dist = plug / "cmr_plug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cmr-plug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cmrstudio.generators]\nplugged = cmr_plug:models\n")
    monkeypatch.syspath_prepend(str(plug))
    models = {m.name: m for m in list_models()}
    assert models["tiny"].origin == "user" and models["plugged"].origin == "plugin"
    assert get_model("plugged").weights_path.name == "tiny.safetensors"
    with pytest.raises(CmrError, match="No model is named 'nope'; installed: .*tiny"):
        get_model("nope")
    p = run("models", "--json", "--verify", env={"CMRSTUDIO_MODELS": str(user)})
    rows = {r["name"]: r for r in json.loads(p.stdout)["models"]}
    assert rows["tiny"]["checksum"] == "ok" and rows["tiny"]["origin"] == "user"


def test_renderer_checks_labels_and_vendors(tiny_run):
    r = Renderer(read_card(tiny_run.out / "tiny.json"))
    m = np.zeros((64, 64), np.uint8)
    m[20:30, 20:30] = 7
    with pytest.raises(CmrError, match="holds label 7, which the model 'tiny' does not know"):
        r.render_framed(m)
    with pytest.raises(CmrError, match="Vendor 'toshiba' is not known"):
        r.render_framed(np.zeros((64, 64), np.uint8), vendor="toshiba")
    mask = phantom_case(seed=3, n_slices=1, shape=(64, 64)).mask[0]
    a = r.render_framed(mask, "ge", seed=1)
    assert a.shape == (64, 64) and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, r.render_framed(mask, "ge", seed=1))  # same seed, same image
    assert not np.array_equal(a, r.render_framed(mask, "ge", seed=2))
    assert not np.array_equal(a, r.render_framed(mask, "siemens", seed=1))


def test_live_path_runs_a_frozen_graph_that_matches_eager_mode(shipped):
    """The live path runs the TorchScript-frozen network on each window size: the same image as eager mode,
    fp32 to rounding and bf16 within its precision."""
    import torch

    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import SliceContext
    from cmrstudio.io import sample_case

    c = sample_case("ED")
    for bf16, tol in ((False, 1e-4), (True, 0.02)):
        r = open_renderer(shipped, bf16=bf16)
        frame = r.frame_for(c.mask, c.spacing, image=c.image)
        for z in (3, 5):
            ctx = SliceContext("in-patient", c.image[z], c.mask[z])
            plan = r.plan(c.mask[z], frame, ctx, r.resolve_vendor("ge")[0], 2)
            cond = torch.from_numpy(plan.cond())[None]
            noise = r.noise_field(2, plan.scene.frame.size)[..., plan.window[0]:plan.window[0] + plan.window[2],
                                                              plan.window[1]:plan.window[1] + plan.window[2]]
            live = next(r._window_steps(cond, 0, 2, noise, live=True))[2]
            eager = next(r._window_steps(cond, 0, 2, noise, live=False))[2]
            assert np.abs(live - eager).mean() < tol, (bf16, z)
            m = plan.mask[plan.window[0]:plan.window[0] + plan.window[2], plan.window[1]:plan.window[1] + plan.window[2]]
            assert live[m == 1].mean() > live[m == 2].mean() + 0.05  # still a bright pool and a dark wall
        assert any(isinstance(n, torch.jit.ScriptModule) for n in r._traced.values())


def test_renderer_is_thread_safe(tiny_run):
    r = Renderer(read_card(tiny_run.out / "tiny.json"))
    masks = phantom_case(seed=4, n_slices=4, shape=(64, 64)).mask
    serial = [r.render_framed(m, "philips", seed=i) for i, m in enumerate(masks)]
    out = [None] * len(masks)

    def work(i):
        out[i] = r.render_framed(masks[i], "philips", seed=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(masks))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(serial, out))


def test_live_engine_is_latest_wins(tiny_run):
    r = Renderer(read_card(tiny_run.out / "tiny.json"))
    case = phantom_case(seed=5, n_slices=1, shape=(96, 80))
    frame = r.frame_for(case.mask, case.spacing)
    results = []
    gate = threading.Event()

    def on_ready(res):
        gate.wait(5)  # hold the worker so edits pile up behind the first render
        results.append(res)

    edits = []
    m = case.mask[0].copy()
    for i in range(12):
        m[40 + i, 5:10] = 3
        edits.append(m.copy())
    with LiveEngine(r, on_ready=on_ready) as eng:
        ids = [eng.submit(e, frame, "siemens", seed=0, tag=i) for i, e in enumerate(edits)]
        gate.set()
        assert eng.wait_idle(30)
        assert eng.submitted == 12 and eng.rendered + eng.dropped == 12 and eng.dropped >= 9
        got = [res.request_id for res in results]
        assert got == sorted(got) and got[-1] == ids[-1] == eng.latest_id  # the newest edit is the last shown
        last = results[-1]
        assert last.error is None and last.image.shape == (96, 80)
        ref, _ = r.render_slice(edits[-1], frame, "siemens", 0)
        assert np.allclose(last.image, ref, atol=1e-6)  # it is the render of the newest mask, not a stale one
        bad = edits[-1].copy()
        bad[0, 0] = 9
        eng.submit(bad, frame)
        assert eng.wait_idle(30)
        assert results[-1].image is None and "label 9" in results[-1].error  # reported, engine still alive
        eng.submit(edits[0], frame)
        assert eng.wait_idle(30) and results[-1].error is None


def test_cli_render_writes_the_masks_geometry_and_reads_back(tiny_run, tmp_path):
    case = phantom_case(seed=6, n_slices=3, shape=(90, 110))
    affine = np.array([[0, 0, 1.3, 5], [0, -1.4, 0, 3], [8.0, 0, 0, -7], [0, 0, 0, 1]])
    mask = tmp_path / "heart_mask.nii.gz"
    write_volume(mask, case.mask, affine)
    card = str(tiny_run.out / "tiny.json")
    out = tmp_path / "synthetic.nii.gz"
    p = run("render", str(mask), "--model", card, "--vendor", "ge", "--seed", "3", "--out", str(out))
    assert "3 slices of 90×110" in p.stdout
    src, res = nib.load(mask), nib.load(out)
    assert res.shape == src.shape and np.allclose(res.affine, src.affine)
    img = np.asarray(res.dataobj).transpose(2, 1, 0)
    assert img.dtype == np.float32 and img.std() > 0.01 and 0 <= img.min() and img.max() <= 1
    # same seed, same image; MHA output carries the same geometry
    out2 = tmp_path / "synthetic.mha"
    run("render", str(mask), "--model", card, "--vendor", "ge", "--seed", "3", "--out", str(out2))
    again = sitk.ReadImage(str(out2))
    # two processes may get different oneDNN kernel choices (last-bit float differences, ~1e-5 seen on
    # AMX Xeons); 1e-4 is far below one grey level of an 8-bit display
    assert np.allclose(sitk.GetArrayFromImage(again), img, atol=1e-4)
    assert np.allclose(again.GetSpacing(), (1.3, 1.4, 8.0))
    # a label the model does not know: one sentence, nothing written
    bad = case.mask.copy()
    bad[1, 10, 10] = 7
    bad_path = tmp_path / "bad_mask.nii.gz"
    write_volume(bad_path, bad, affine)
    p = cli("render", str(bad_path), "--model", card, "--out", str(tmp_path / "never.nii.gz"), check=False)
    assert p.returncode == 2 and "label value 7" in p.stderr and str(bad_path) in p.stderr
    assert not (tmp_path / "never.nii.gz").exists()
    p = cli("render", str(mask), "--model", card, "--vendor", "toshiba", "--out", str(tmp_path / "never.nii.gz"), check=False)
    assert p.returncode == 2 and "Vendor 'toshiba' is not known" in p.stderr


# -- the shipped model ---------------------------------------------------------------------------

SHIPPED = resources_dir() / "models" / "spade-cmr.json"


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.exists():
        pytest.skip("resources/models/spade-cmr.json is not in this checkout")
    return get_model()


def test_shipped_model_card_states_its_data_terms_and_checksum(shipped):
    verify(shipped)
    card = shipped.card
    assert shipped.name == "spade-cmr" and shipped.origin == "shipped" and shipped.size_mb < 25
    datasets = {d["dataset"]: d for d in card["training"]["data"]}
    assert {"acdc", "mnms"} <= set(datasets)
    assert all(d["slices"] > 0 and d["cases"] > 0 and d["licence"] for d in datasets.values())
    assert "non-commercial" in card["terms"]
    assert card["training"]["iterations"] >= 1000 and card["training"]["hardware"]
    assert set(card["vendors_trained"]) >= {"siemens", "philips", "unknown"}
    assert SpadeConfig.from_dict(card["architecture"]["options"]) == PRESETS["scene"]  # the whole-slice live model
    cond = card["conditioning"]
    # fully synthetic: the fine (2.5 mm) tissue-class prior, none of its classes on the heart or within 3.75 mm of it
    assert cond["scheme"] == "scene-v1" and cond["layout_prior"] == {"name": "layout-cmr-fine", "cell_px": 2} and cond["layout_factor"] == 2
    assert cond["layout_hidden_near_heart_mm"] == 3.75
    from cmrstudio.models.layout import fine_cell_px, is_fine

    prior = get_model(cond["layout_prior"]["name"], kind="layout")
    verify(prior)
    assert prior.origin == "shipped" and is_fine(prior) and fine_cell_px(prior) == cond["layout_factor"]


def test_shipped_model_renders_a_real_mnms_mask_with_bright_blood_pools(shipped, tmp_path):
    mnms = shared("mnms")
    mask = mnms / "H1N8S6_sa_ED_gt.nii.gz"  # held out from training
    out = tmp_path / "H1N8S6_synthetic.nii.gz"
    run("render", str(mask), "--vendor", "siemens", "--seed", "0", "--out", str(out))
    img = np.asarray(nib.load(out).dataobj).transpose(2, 1, 0)
    from cmrstudio.io import read_mask

    m = read_mask(mask).mask
    zs = [z for z in range(len(m)) if {1, 2, 3} <= set(np.unique(m[z]))]
    assert zs
    lv = np.mean([img[z][m[z] == 1].mean() for z in zs])
    myo = np.mean([img[z][m[z] == 2].mean() for z in zs])
    rv = np.mean([img[z][m[z] == 3].mean() for z in zs])
    # bSSFP cine: blood is bright, myocardium dark; the painted anatomy must show
    assert lv > myo + 0.15, (lv, myo, rv)
    # the RV pool too: measured LV 0.56, MYO 0.26, RV 0.38 (step 4548, 2026-12-05 afternoon); the weights before drew it
    # too dark (RV 0.28 on 2026-12-03, 0.29 in the morning of 2026-12-05), and this was an expected failure
    assert rv > myo + 0.1, (lv, myo, rv)


def test_bench_live_prints_latency_figures(tiny_run):
    p = run("bench", "live", "--model", str(tiny_run.out / "tiny.json"), "--n", "6", "--json")
    res = json.loads(p.stdout)
    assert res["n"] == 6 and 0 < res["p50_ms"] <= res["p95_ms"] and res["fps"] > 0
    assert res["model_p50_ms"] > 0 and res["size"] == 64 and res["model"] == "tiny"
    e = res["engine"]
    assert e["submitted"] == 6 and e["rendered"] + e["dropped"] == 6 and e["rendered"] >= 1
    text = run("bench", "live", "--model", str(tiny_run.out / "tiny.json"), "--n", "4").stdout
    assert "p50" in text and "fps" in text and "dropped as stale" in text


@pytest.mark.slow
def test_kept_checkpoints_are_measured_alike_so_that_one_can_be_picked(tmp_path):
    """`train --keep-checkpoints` keeps the model at every save; `evaluate checkpoints` renders the same held-out slices
    with each and prints KID, FID, Dice and the grid per step, and names the best by its rule."""
    from cmrstudio.io import write_case

    out = tmp_path / "run"
    SpadeTrainer(TrainOptions(out=str(out), name="tiny", steps=20, keep_checkpoints=True, **{**SMALL, "save_every": 10})).run(progress=False)
    kept = sorted((out / "checkpoints").glob("*.json"))
    assert [p.name for p in kept] == ["tiny-step000010.json", "tiny-step000020.json"]
    infos = [read_card(p) for p in kept]
    for info in infos:
        verify(info)  # each kept checkpoint's weights match its own card
    assert infos[0].card["name"] == "tiny-step000010" and infos[0].card["sha256"] != infos[1].card["sha256"]
    from safetensors.numpy import load_file

    last, model = load_file(str(infos[1].weights_path)), load_file(str(out / "tiny.safetensors"))
    assert last.keys() == model.keys() and all(np.array_equal(last[k], model[k]) for k in model)  # the last save is the run's model
    data = tmp_path / "held"
    for i in range(2):
        write_case(phantom_case(100 + i, n_slices=4, shape=(80, 80), phase="ED"), data)
    text = run("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "6", "--out", str(tmp_path / "eval")).stdout
    assert "step      10" in text and "step      20" in text and "best: tiny-step0000" in text
    res = json.loads((tmp_path / "eval" / "checkpoints.json").read_text(encoding="utf-8"))
    steps = [c["step"] for c in res["checkpoints"]]
    assert steps == [10, 20] and res["slices"] == 6 and len(res["cases"]) == 2
    a, b = res["checkpoints"]
    assert a["kid"] != b["kid"] and 0 <= a["dice"]["mean"] <= 1 and a["grid"]["peak_ratio"] > 0
    assert res["real"]["dice"]["mean"] > a["dice"]["mean"]  # 10 steps of a tiny model draw nothing a segmenter finds
    clean = [c for c in res["checkpoints"] if c["grid"]["peak_ratio"] <= 5] or res["checkpoints"]
    assert res["best"] == max(clean, key=lambda c: c["dice"]["mean"])["name"] and "none reaches" in res["best_rule"]
    later = json.loads(run("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "6", "--from-step", "11", "--json").stdout)
    assert [c["step"] for c in later["checkpoints"]] == [20] and later["checkpoints"][0]["kid"] == pytest.approx(b["kid"])
    for args, said in ((("--from-step", "21"), "kept no checkpoint from step 21 to the end; it kept steps 10 to 20"),
                       (("--to-step", "-3"), "--to-step -3 must be a step number")):
        bad = cli("evaluate", "checkpoints", str(out), "--data", str(data), *args, check=False)
        assert bad.returncode != 0 and said in bad.stderr, bad.stderr
    every = json.loads(run("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "0", "--json").stdout)
    assert every["slices"] == 8 and [c["step"] for c in every["checkpoints"]] == [10, 20]  # 0: all 2 x 4 heart slices
    bad = cli("evaluate", "checkpoints", str(tmp_path / "held"), "--data", str(data), check=False)
    assert bad.returncode != 0 and "holds no kept checkpoints" in bad.stderr and "--keep-checkpoints" in bad.stderr
    bad = cli("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "-1", check=False)
    assert bad.returncode != 0 and "--max-slices -1 must be 0 (every heart slice) or more" in bad.stderr
    # two seed sets pooled, with the spread of each set's own KID; a model to compare, measured alike and never named best
    text = run("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "6", "--seed-sets", "2",
               "--compare", str(kept[0]), "--out", str(tmp_path / "eval2")).stdout
    assert "2 seed sets" in text and "(seed sets: SD" in text and "tiny-step000010 (compared)" in text
    two = json.loads((tmp_path / "eval2" / "checkpoints.json").read_text(encoding="utf-8"))
    assert two["seed_sets"] == 2 and all(len(c["kid_seed_sets"]) == 2 and c["kid_seed_sd"] >= 0 for c in two["checkpoints"])
    (c10, c20), (again,) = two["checkpoints"], two["compared"]
    assert c10["kid_seed_sets"][0] == pytest.approx(a["kid"])  # the first set is the one-set screen's renders
    assert c10["kid_seed_sets"][0] != c10["kid_seed_sets"][1]  # the second set is other renders
    assert again["step"] is None and again["sha256"] == c10["sha256"] and again["kid"] == pytest.approx(c10["kid"])  # alike
    assert two["best"] in (c10["name"], c20["name"])
    for args, said in ((("--seed-sets", "0"), "--seed-sets 0 must be a whole number from 1 to 16"),
                       (("--compare", str(tmp_path / "nowhere.json")), "nowhere.json")):
        bad = cli("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "6", *args, check=False)
        assert bad.returncode != 0 and said in bad.stderr, bad.stderr
        assert "checkpoint(s) of" not in bad.stdout  # refused before the table, so no header is left without rows


def test_the_checkpoint_named_best_is_the_most_real_of_those_that_keep_the_anatomy_and_draw_no_grid():
    """Fully synthetic: the lowest KID among the checkpoints whose Dice is within 0.02 of the real slices' and whose grid
    peak is at most 5; where none keeps the anatomy, the highest Dice; in this patient, the lowest KID without a grid."""
    from cmrstudio.evaluate.checkpoints import pick_best

    def row(name, kid, dice, grid=2.0):
        return {"name": name, "kid": kid, "dice": {"mean": dice}, "grid": {"peak_ratio": grid}}

    rows = [row("a", 0.070, 0.870), row("b", 0.060, 0.850), row("c", 0.050, 0.800), row("d", 0.040, 0.860, grid=5.9)]
    best, rule = pick_best(rows, 0.857, "synthetic")
    assert best == "b" and "at least 0.837" in rule  # c is more real but loses the anatomy, d draws a grid
    assert pick_best(rows, 0.900, "synthetic")[0] == "a"  # none faithful: the anatomy first
    assert "none reaches" in pick_best(rows, 0.900, "synthetic")[1]
    assert pick_best(rows, 0.857, "in-patient")[0] == "c"
    assert pick_best([row("d", 0.04, 0.86, grid=6.0), row("e", 0.05, 0.86, grid=7.0)], 0.857, "synthetic") == (
        "d", "the lowest KID among checkpoints (every one has a grid peak ratio above 5), with a Dice of at least 0.837 (the real slices' less 0.02)")


@pytest.mark.slow
def test_in_patient_fine_tuning_warms_up_the_discriminator_and_checkpoints_are_picked_in_the_patient(tmp_path, monkeypatch):
    """`--in-patient 1` trains on in-patient windows only; `--d-groupnorm` puts GroupNorm beside spectral norm in the
    discriminator; `--d-warmup N` keeps an --init generator as it was for the first N steps while the fresh discriminator
    learns; `evaluate checkpoints --mode in-patient` renders the held-out slices in
    their own surroundings and names the checkpoint with the lowest KID."""
    from safetensors.numpy import load_file

    from cmrstudio.io import write_case

    scene = {**SMALL, "preset": "scene-tiny", "size": 64}
    base = SpadeTrainer(TrainOptions(out=str(tmp_path / "base"), name="base", steps=4, **{**scene, "save_every": 4}))
    base.run(progress=False)
    out = tmp_path / "ft"
    tr = SpadeTrainer(TrainOptions(out=str(out), name="ft", steps=12, keep_checkpoints=True, init=str(tmp_path / "base" / "base.json"),
                                   in_patient=1.0, d_warmup=4, d_groupnorm=True, adv_region=True, **{**scene, "save_every": 4}))
    assert {tr.ds.sample(i)["mode"] for i in range(12)} == {"context"}  # every window in this patient
    assert any(isinstance(m, torch.nn.GroupNorm) for m in tr.D.modules()) and tr.cfg.d_spectral_norm  # both, as SPADE's D
    assert "another architecture: d_groupnorm False" in tr.pretraining["discriminator"]  # so the base run's D is not loaded
    import cmrstudio.train.spade as trainer

    seen = {"repaint": [], "d": [], "g": []}
    for name, key in (("d_hinge", "d"), ("g_hinge", "g")):  # --adv-region: which weights reach the two hinge losses
        monkeypatch.setattr(trainer, name, lambda *a, _f=getattr(trainer, name), _k=key: seen[_k].append(a[-1]) or _f(*a))
    monkeypatch.setattr(trainer, "region_weights", lambda D, r, _f=trainer.region_weights: seen["repaint"].append(r) or _f(D, r))
    tr.run(progress=False)
    monkeypatch.undo()
    assert len(seen["repaint"]) == 12 and len(seen["d"]) == 12 and len(seen["g"]) == 8  # the generator's losses after the warm-up
    assert all(((r == 0) | (r == 1)).all() and 0 < r[i].mean() < 1 for r in seen["repaint"] for i in range(len(r)))  # each window
    assert all(w is not None and len(w) == tr.cfg.num_d for w in seen["d"] + seen["g"])  # in part repainted, in part real
    start, after_warmup, last = (load_file(str(p)) for p in (tmp_path / "base" / "base.safetensors",
                                                             out / "checkpoints" / "ft-step000004.safetensors",
                                                             out / "checkpoints" / "ft-step000012.safetensors"))
    assert all(np.array_equal(start[k], after_warmup[k]) for k in start)  # the generator waited for the discriminator
    assert any(not np.array_equal(start[k], last[k]) for k in start)  # and learned after it
    card = read_card(out / "ft.json").card
    assert "all in-patient" in card["training"]["augment"] and "fully synthetic" not in card["training"]["augment"]
    assert card["training"]["discriminator_warmup_steps"] == 4
    assert "over the repainted region" in card["architecture"]["losses"]["hinge_average"]
    ft = dict(steps=16, init=str(tmp_path / "base" / "base.json"), **{**scene, "save_every": 4})
    with pytest.raises(CmrError, match="--in-patient 1.0, not 0.5"):  # a resumed run keeps its share of in-patient windows
        SpadeTrainer(TrainOptions(out=str(out), name="ft", resume=True, in_patient=0.5, d_groupnorm=True, adv_region=True, **ft))
    with pytest.raises(CmrError, match="d_groupnorm True, not False"):  # and its discriminator, by name
        SpadeTrainer(TrainOptions(out=str(out), name="ft", resume=True, in_patient=1.0, adv_region=True, **ft))
    with pytest.raises(CmrError, match="--adv-region True, not False"):  # and how its hinge losses are averaged
        SpadeTrainer(TrainOptions(out=str(out), name="ft", resume=True, in_patient=1.0, d_groupnorm=True, **ft))
    # the model --init names is retrained in place: the resumed run goes on from its own state, and its card still
    # names the weights it started from, not what the name means now
    started = card["training"]["pretraining"]
    SpadeTrainer(TrainOptions(out=str(tmp_path / "base"), name="base", steps=6, resume=True, **{**scene, "save_every": 4})).run(progress=False)
    assert read_card(tmp_path / "base" / "base.json").card["sha256"] != started["sha256"]
    said = []
    SpadeTrainer(TrainOptions(out=str(out), name="ft", resume=True, in_patient=1.0, d_groupnorm=True, adv_region=True, **ft),
                 log=said.append).run(progress=False)
    assert any("now names other weights" in s and started["sha256"][:12] in s for s in said)
    assert read_card(out / "ft.json").card["training"]["pretraining"] == started
    assert read_card(out / "ft.json").card["training"]["iterations"] == 16
    # a state that kept only the sha of its start (as flow runs did) cannot name it: where the sha differs, refused
    optim = out / "train_state" / "optim.pt"
    saved = torch.load(optim, map_location="cpu", weights_only=True)
    saved["extra"].pop("pretraining")
    torch.save({**saved, "extra": {**saved["extra"], "init_sha256": "0" * 64}}, optim)
    with pytest.raises(CmrError, match="started from a model with sha256 000000000000…, but --init .* is now base"):
        SpadeTrainer(TrainOptions(out=str(out), name="ft", resume=True, in_patient=1.0, d_groupnorm=True, adv_region=True, **ft))

    data = tmp_path / "held"
    for i in range(2):
        write_case(phantom_case(100 + i, n_slices=4, shape=(80, 80), phase="ED"), data)
    ev = {}
    for mode in ("in-patient", "synthetic"):
        text = run("evaluate", "checkpoints", str(out), "--data", str(data), "--max-slices", "6", "--mode", mode,
                   "--out", str(tmp_path / mode)).stdout
        ev[mode] = json.loads((tmp_path / mode / "checkpoints.json").read_text(encoding="utf-8"))
        assert ("in this patient" in text) == (mode == "in-patient") and "step      12" in text
    ip = ev["in-patient"]
    assert ip["mode"] == "in-patient" and ip["margin_mm"] == 5.0 and [c["step"] for c in ip["checkpoints"]] == [4, 8, 12]
    clean = [c for c in ip["checkpoints"] if c["grid"]["peak_ratio"] <= 5] or ip["checkpoints"]
    assert ip["best"] == min(clean, key=lambda c: c["kid"])["name"] and "lowest KID" in ip["best_rule"]
    # a dozen steps of a tiny model draw little; in this patient most of the slice is the patient's own
    assert all(a["kid"] < b["kid"] for a, b in zip(ip["checkpoints"], ev["synthetic"]["checkpoints"]))
    bad = cli("evaluate", "checkpoints", str(out), "--data", str(data), "--mode", "inpatient", check=False)
    assert bad.returncode != 0 and "--mode 'inpatient' is not known" in bad.stderr


def test_region_weighted_hinge_looks_only_where_the_generator_repainted():
    """In an in-patient window the composite is the real scan outside the repainted region. region_weights gives each
    discriminator output the repainted share of its own receptive field (the scene discriminator's geometry, not a
    resize of the map), so the weighted hinge losses ignore outputs that see none of the region, however they score;
    a window repainted everywhere (fully synthetic) weighs every output alike, as the plain mean does."""
    torch.manual_seed(0)
    D = MultiScaleDiscriminator(SpadeConfig.from_dict({**PRESETS["scene"].to_dict(), "size": 64}))  # no GroupNorm: local outputs
    image = torch.randn(1, 1, 64, 64, requires_grad=True)
    out = D(image, torch.zeros(1, D.cfg.n_cond, 64, 64), torch.zeros(1, dtype=torch.long))
    dot = torch.zeros(1, 1, 64, 64)
    dot[..., 40, 21] = 1  # one repainted pixel
    w = region_weights(D, dot)
    for scale, (o, m) in enumerate(zip(out, w)):
        assert m.shape == o[-1].shape
        sees = torch.autograd.grad(o[-1][0, 0].flatten() @ (m[0, 0].flatten() > 0).float(), image, retain_graph=True)[0][0, 0]
        blind = torch.autograd.grad(o[-1][0, 0].flatten() @ (m[0, 0].flatten() == 0).float(), image, retain_graph=True)[0][0, 0]
        assert sees[40, 21] != 0 and blind[40, 21] == 0, scale  # weighted exactly where the output depends on the pixel

    repaint = torch.zeros(2, 1, 128, 128)
    repaint[0, :, 40:88, 40:88] = 1  # in this patient: a 48-pixel square repainted (wider than a receptive field)
    repaint[1] = 1  # fully synthetic
    w = region_weights(D, repaint)
    assert torch.equal(w[0][1], torch.ones_like(w[0][1])) and torch.equal(w[1][1], torch.ones_like(w[1][1]))
    part = w[0][0]
    assert part.max() == 1 and (part == 0).any() and ((part > 0) & (part < 1)).any()  # inside, outside and the seam between
    real = [[torch.randn_like(m)] for m in w]
    fake = [[torch.randn_like(m)] for m in w]
    moved_real, moved_fake = [[r[0].clone()] for r in real], [[f[0].clone()] for f in fake]
    for m, r, f in zip(w, moved_real, moved_fake):  # scores of outputs that see none of the region change nothing
        r[0][0][m[0] == 0] = -50.0
        f[0][0][m[0] == 0] = 50.0
    assert torch.allclose(d_hinge(real, fake, w), d_hinge(moved_real, moved_fake, w))
    assert torch.allclose(g_hinge(fake, w), g_hinge(moved_fake, w))
    assert not torch.allclose(d_hinge(real, fake), d_hinge(moved_real, moved_fake))  # the plain mean is moved by them
    seam = [[f[0].clone()] for f in fake]
    seam[0][0][0, 0][(part[0] > 0) & (part[0] < 1)] += 1.0  # outputs that see part of the region do count
    assert not torch.allclose(g_hinge(fake, w), g_hinge(seam, w))
    expected = sum(-(f[0][0, 0] * m[0, 0]).sum() / m[0, 0].sum() - f[0][1].mean() for f, m in zip(fake, w)) / 4
    assert torch.allclose(g_hinge(fake, w), expected)  # per window, then over the batch and the scales
    both = [[torch.cat([f[0][1:], f[0][1:]])] for f in fake]  # two fully synthetic windows: the weighted mean is the mean
    assert torch.allclose(g_hinge(both, region_weights(D, torch.ones(2, 1, 128, 128))), g_hinge(both))
    assert all(torch.equal(m, torch.ones_like(m)) for m in region_weights(D, torch.zeros(1, 1, 64, 64)))  # nothing repainted: even


def test_training_refuses_bad_options_in_one_sentence(tmp_path):
    with pytest.raises(CmrError, match="fewer than --batch 500"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "a"), **{**SMALL, "batch": 500}))
    with pytest.raises(CmrError, match="--size 100 must be 8 times a power of two"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "b"), **{**SMALL, "size": 100}))
    with pytest.raises(CmrError, match="--save-every 0 must be at least 1"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "c"), **{**SMALL, "save_every": 0}))
    with pytest.raises(CmrError, match="--resume was given"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "d"), resume=True, **SMALL))
    scene = {**SMALL, "preset": "scene-tiny"}
    for bad, said in ((dict(in_patient=1.5, **scene), "--in-patient 1.5 must be a fraction from 0"),
                      (dict(in_patient=0.8, **SMALL), "--in-patient applies to scene presets only"),
                      (dict(d_warmup=-1, **scene), "--d-warmup -1 must be 0"),
                      (dict(d_warmup=60, steps=60, **scene), "below --steps 60"),
                      (dict(d_warmup=5, dp_epsilon=5.0, **scene), "--d-warmup is not available with --dp-epsilon"),
                      (dict(adv_region=True, **SMALL), "--adv-region weighs the repainted region of in-patient windows"),
                      (dict(adv_region=True, in_patient=0.0, **scene), "--in-patient 0 leaves out"),
                      (dict(adv_region=True, dp_epsilon=5.0, **scene), "leave --adv-region out with --dp-epsilon"),
                      (dict(hide_heart_classes=-2.0, **scene), "--hide-heart-classes -2.0 must be a distance in mm above 0"),
                      (dict(hide_heart_classes=3.0, **SMALL), "only scene presets are conditioned on")):
        with pytest.raises(CmrError, match=said):
            SpadeTrainer(TrainOptions(out=str(tmp_path / "f"), **bad))
    p = cli("train", "spade", "--phantom", "1", "--out", str(tmp_path / "e"), "--name", "../evil", check=False)
    assert p.returncode == 2 and "--name '../evil'" in p.stderr and not (tmp_path / "evil.json").exists()


def test_card_naming_weights_outside_its_folder_is_refused(tiny_run, tmp_path):
    card = copy_model(tiny_run.out / "tiny.json", tmp_path / "m")
    for bad in ("../tiny.safetensors", "/etc/passwd", "..", 7):
        d = json.loads(card.read_text(encoding="utf-8"))
        d["weights"] = bad
        card.write_text(json.dumps(d))
        with pytest.raises(CmrError, match="must be a plain NAME.safetensors"):
            read_card(card)


def test_live_engine_survives_a_failing_callback(tiny_run):
    r = Renderer(read_card(tiny_run.out / "tiny.json"))
    case = phantom_case(seed=8, n_slices=1, shape=(64, 64))
    frame = r.frame_for(case.mask, case.spacing)
    seen = []

    def on_ready(res):
        seen.append(res.request_id)
        if len(seen) == 1:
            raise RuntimeError("the GUI went away")

    with LiveEngine(r, on_ready=on_ready) as eng:
        eng.submit(case.mask[0], frame)
        with pytest.warns(UserWarning, match="callback failed"):
            assert eng.wait_idle(30)
        second = eng.submit(case.mask[0], frame)
        assert eng.wait_idle(30)
        assert seen == [1, second] and eng.rendered == 2 and "the GUI went away" in eng.callback_errors[0]


# -- the period-2 grid penalty ---------------------------------------------------------------------

def _sample_slices():
    from cmrstudio.data.slices import framed_slices
    from cmrstudio.io import sample_case

    rows = framed_slices([sample_case("ED"), sample_case("ES")], 128, 1.25)
    return np.stack([im for _, ims, _ in rows for im in ims]).astype(np.float32)


def _blocky(images: np.ndarray) -> np.ndarray:
    """Half resolution, then nearest-neighbour 2x: edges fall only between 2x2 blocks, a grid locked to the pixels."""
    from scipy import ndimage

    return np.stack([np.kron(ndimage.zoom(im, 0.5, order=1), np.ones((2, 2))) for im in images]).astype(np.float32)


def test_grid_penalty_sees_a_pixel_locked_grid_and_training_against_it_removes_the_grid():
    from cmrstudio.evaluate.realism import grid_artefact
    from cmrstudio.models.spade import grid_modulation

    real = _sample_slices()
    blocky = _blocky(real)
    g_real, g_blocky = float(grid_modulation(torch.from_numpy(real))), float(grid_modulation(torch.from_numpy(blocky)))
    assert g_blocky > 20 * g_real and g_blocky > 0.05, (g_real, g_blocky)
    # the same content shifted by one pixel half the time: the grid is no longer locked, the penalty falls
    mixed = blocky.copy()
    mixed[::2] = np.roll(blocky[::2], 1, axis=(1, 2))
    assert float(grid_modulation(torch.from_numpy(mixed))) < g_blocky / 4
    # descending the penalty (with an L1 tie to the images) takes the grid out of them
    x = torch.tensor(blocky, requires_grad=True)
    opt = torch.optim.Adam([x], lr=2e-3)
    for _ in range(150):
        loss = 2000 * grid_modulation(x) + (x - torch.from_numpy(blocky)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    before, after = grid_artefact(blocky, real), grid_artefact(x.detach().clamp(0, 1).numpy(), real)
    assert after["peak_ratio"] < before["peak_ratio"] / 3, (before, after)
    assert float((x.detach() - torch.from_numpy(blocky)).abs().mean()) < 0.03  # the images are kept, not washed out


def test_grid_penalty_over_batches_keeps_the_grid_they_share_and_not_their_content():
    from cmrstudio.models.spade import GridPenalty

    real = torch.from_numpy(_sample_slices())
    blocky = torch.from_numpy(_blocky(real.numpy()))
    rng = np.random.default_rng(0)
    powers = {}
    for name, images in (("real", real), ("blocky", blocky)):
        pen = GridPenalty()
        for _ in range(60):
            pen(images[rng.choice(len(images), 4, replace=False)])
        powers[name] = pen.power
    assert powers["blocky"] > 20 * powers["real"], powers


def test_descending_the_grid_penalty_over_batches_takes_a_grid_out_and_draws_none_of_opposite_phase():
    """Gradient descent on images against GridPenalty (a strong weight, an L1 tie to where they started, batches of 4):
    real slices keep their spectrum, since a penalty cut at 0 gives no reward for an anti-phase grid (the uncut
    projection drew 4.4 from a floor of 2.6), and a blocky 2x upsampling loses most of its grid (uncut: 46.9 to 21.7)."""
    from cmrstudio.evaluate.realism import grid_artefact
    from cmrstudio.models.spade import GridPenalty

    real = torch.from_numpy(_sample_slices())
    floor = grid_artefact(real.numpy(), real.numpy())["peak_ratio"]

    def descend(start: torch.Tensor) -> tuple[float, float]:
        rng = np.random.default_rng(0)
        x = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=2e-3)
        pen = GridPenalty()
        for _ in range(300):
            b = rng.choice(len(x), 4, replace=False)
            loss = 2000 * pen(x[b]) + (x[b] - start[b]).abs().mean()
            assert float(loss) >= 0
            opt.zero_grad()
            loss.backward()
            opt.step()
        return grid_artefact(start.numpy(), real.numpy())["peak_ratio"], grid_artefact(x.detach().clamp(0, 1).numpy(), real.numpy())["peak_ratio"]

    _, after = descend(real)
    assert after < 1.4 * floor, (floor, after)
    before, after = descend(torch.from_numpy(_blocky(real.numpy())))
    assert before > 10 * floor and after < 0.35 * before, (before, after)


def test_training_with_the_grid_penalty_records_it_and_bad_weights_are_refused(tmp_path):
    from cmrstudio.train.spade import SpadeTrainer, TrainOptions

    with pytest.raises(CmrError, match="--grid-loss -1"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "bad"), name="bad", steps=2, grid=-1.0, **SMALL)).run(progress=False)
    with pytest.raises(CmrError, match="differentially private"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "bad2"), name="bad", steps=2, grid=10.0, dp_epsilon=8.0, **SMALL)).run(progress=False)
    out = tmp_path / "grid"
    tr = SpadeTrainer(TrainOptions(out=str(out), name="gridded", steps=10, grid=2000.0, seed=0, **SMALL))
    tr.run(progress=False)
    card = read_card(out / "gridded.json").card
    assert card["architecture"]["losses"]["grid_period2"] == 2000.0
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(np.isfinite(r["grid"]) and r["grid"] >= 0 for r in logged if "step" in r) and any("grid" in r for r in logged)
    # the penalty's running mean travels with the training state: a resumed run goes on from it, not from zero
    saved = tr.grid_penalty.ref.clone()
    resumed = SpadeTrainer(TrainOptions(out=str(out), name="gridded", steps=12, grid=2000.0, seed=0, resume=True, **SMALL))
    resumed._load_state()
    assert resumed.grid_penalty.ref is not None and torch.allclose(resumed.grid_penalty.ref, saved)


# -- mode seeking: seeds that change the image --------------------------------------------------------

def test_mode_seeking_pushes_two_seeds_of_one_mask_apart_and_training_records_it(tmp_path):
    from cmrstudio.train.spade import SpadeTrainer, TrainOptions

    with pytest.raises(CmrError, match="--mode-seeking -1"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "bad"), name="bad", steps=2, mode_seeking=-1.0, **SMALL))
    with pytest.raises(CmrError, match="count twice in a private step"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "bad2"), name="bad", steps=2, mode_seeking=1.0, dp_epsilon=8.0, **SMALL))
    out = tmp_path / "ms"
    tr = SpadeTrainer(TrainOptions(out=str(out), name="seeking", steps=6, mode_seeking=1.0, seed=0, **SMALL))
    tr.run(progress=False)
    card = read_card(out / "seeking.json").card
    assert card["architecture"]["losses"]["mode_seeking"] == 1.0
    logged = [r for r in (json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()) if "step" in r]
    assert logged and all(np.isfinite(r["ms"]) and r["ms"] > 0 for r in logged)

    # the loss's own pull: descending it alone takes two renders of the same masks apart
    mask = torch.from_numpy(phantom_case(seed=5, n_slices=2, shape=(64, 64)).mask.astype(np.int64))
    oh, v = onehot(mask), torch.zeros(2, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(2, tr.cfg.z_dim, generator=g), torch.randn(2, tr.cfg.z_dim, generator=g))
    opt = torch.optim.Adam(tr.G.parameters(), lr=1e-3)

    def apart():
        return float((tr.G(oh, v, z[0]) - tr.G(oh, v, z[1])).abs().mean())

    before = apart()
    for _ in range(15):
        fake, other = tr.G(oh, v, z[0]), tr.G(oh, v, z[1])
        ms = tr._g_losses(tr.D, fake, fake.detach(), oh, v, other, z)["ms"]
        opt.zero_grad()
        ms.backward()
        opt.step()
    assert apart() > 1.5 * before, (before, apart())


def test_with_style_z_the_latent_styles_every_block_and_not_only_the_first_map():
    """lite-style: z reaches the image through every block's SPADE, not only through the first 8×8 map."""
    mask = torch.from_numpy(phantom_case(seed=6, n_slices=1, shape=(64, 64)).mask.astype(np.int64))
    oh, v = onehot(mask), torch.tensor([1])
    z1, z2 = torch.randn(1, 64, generator=torch.Generator().manual_seed(1)), torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    seen = {}
    for preset in ("lite", "lite-style"):
        torch.manual_seed(0)
        g = SpadeGenerator(SpadeConfig(**{**PRESETS[preset].to_dict(), "size": 64})).eval()
        for p in g.parameters():  # zero-initialised SPADE convs: perturb so that every path matters
            p.data.add_(0.05 * torch.randn_like(p))
        fixed = g.fc(torch.cat([z1, g.vendor_embed(v)], 1))
        g.fc.register_forward_hook(lambda *_: fixed)  # the first map no longer depends on z
        with torch.no_grad():
            seen[preset] = float((g(oh, v, z1) - g(oh, v, z2)).abs().mean())
    assert seen["lite"] == 0.0 and seen["lite-style"] > 1e-3, seen
    # a card without the option (every model before it) rebuilds as before
    assert SpadeConfig.from_dict({k: v for k, v in PRESETS["lite"].to_dict().items() if k != "style_z"}).style_z is False


def test_loading_workers_each_augment_with_their_own_reproducible_stream_and_train(tmp_path):
    """--workers: items are made in loading processes. Each worker must draw its own augmentations (a copied stream would
    repeat them), the same again after the same seed, and a run with workers trains and resumes."""
    from torch.utils.data import DataLoader

    from cmrstudio.train.common import _seed_worker, loader_workers

    out = tmp_path / "w"
    tr = SpadeTrainer(TrainOptions(out=str(out), name="w", steps=8, workers=2, **SMALL))
    assert tr.loader.num_workers == 2 and tr.loader.worker_init_fn is _seed_worker

    def one_slice_six_times(seed):
        torch.manual_seed(seed)  # the workers' seeds come from the training process's random state, saved with a run
        dl = DataLoader(tr.ds, batch_size=1, sampler=[0] * 6, **loader_workers(2, torch.device("cpu")))
        return [b["image"][0, 0] for b in dl]

    a = one_slice_six_times(1)
    assert all(not torch.equal(a[i], a[j]) for i in range(6) for j in range(i + 1, 6))  # worker 0 and worker 1 differ
    assert all(torch.equal(x, y) for x, y in zip(a, one_slice_six_times(1)))
    assert not torch.equal(a[0], one_slice_six_times(2)[0])
    tr.run(progress=False)
    logged = [json.loads(ln) for ln in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert tr.step == 8 and [r["step"] for r in logged] == [5, 8] and all(np.isfinite(r["g"]) for r in logged)
    again = SpadeTrainer(TrainOptions(out=str(out), name="w", steps=10, workers=2, resume=True, **SMALL))
    again.run(progress=False)
    assert json.loads((out / "w.json").read_text(encoding="utf-8"))["training"]["iterations"] == 10
    with pytest.raises(CmrError, match=r"--workers -1 must be 0"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "neg"), name="w", steps=8, workers=-1, **SMALL))
    with pytest.raises(CmrError, match="--workers is not available with --dp-epsilon"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "dp"), name="w", steps=8, workers=2, dp_epsilon=5.0, **SMALL))
    p = cli("train", "spade", "--phantom", "4", "--size", "64", "--batch", "4", "--steps", "2", "--workers", "-1",
            "--out", str(tmp_path / "cli"), "--quiet", check=False)
    assert p.returncode != 0 and "--workers -1 must be 0" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "cli" / "train_state").exists()


def test_the_feature_matching_and_low_pass_weights_are_options_recorded_in_the_card(tmp_path):
    p = run("train", "spade", "--phantom", "4", "--size", "64", "--batch", "4", "--steps", "2", "--lowpass", "2", "--fm", "3",
            "--out", str(tmp_path / "lp"), "--name", "lp", "--quiet")
    losses = json.loads((tmp_path / "lp" / "lp.json").read_text(encoding="utf-8"))["architecture"]["losses"]
    assert losses["lowpass_l1_4x"] == 2.0 and losses["feature_matching"] == 3.0
    for flag in ("--lowpass", "--fm"):  # and infinity, below
        p = cli("train", "spade", "--phantom", "4", "--size", "64", "--steps", "2", flag, "-1", "--out", str(tmp_path / "bad"), check=False)
        assert p.returncode == 2 and f"{flag} -1.0 must be 0 (off) or a finite weight above it." in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CmrError, match="--lowpass inf must be 0"):
        SpadeTrainer(TrainOptions(out=str(tmp_path / "inf"), name="lp", lowpass=float("inf"), **SMALL))


def test_an_installed_model_keeps_its_discriminator_and_critic_for_the_next_fine_tune(tmp_path, monkeypatch):
    """A model away from its run folder (installed, shipped) keeps the discriminator and critic it was trained against in
    NAME.adversaries/ beside its card: --install copies them there and --init takes them, so a fine-tune does not start
    with fresh ones (which cost realism for thousands of steps); a model without them gets fresh ones, and says so."""
    import shutil

    from safetensors.numpy import load_file

    from cmrstudio.models.checkpoint import adversaries_dir
    from cmrstudio.models.registry import get_model, install_model

    monkeypatch.setenv("CMRSTUDIO_MODELS", str(tmp_path / "user"))
    scene = {**SMALL, "preset": "scene-tiny", "size": 64}
    SpadeTrainer(TrainOptions(out=str(tmp_path / "run"), name="adv", steps=4, critic=1.0, **{**scene, "save_every": 4})).run(progress=False)
    kept = {n: load_file(str(tmp_path / "run" / "train_state" / f"{n}.safetensors")) for n in ("discriminator", "critic")}
    installed = install_model(get_model(str(tmp_path / "run" / "adv.json"), kind=None))
    adv = adversaries_dir(installed.card_path)
    assert adv == tmp_path / "user" / "adv.adversaries" and sorted(p.name for p in adv.iterdir()) == ["critic.safetensors",
                                                                                                       "discriminator.safetensors"]
    SpadeTrainer(TrainOptions(out=str(tmp_path / "plain"), name="adv", steps=4, **{**scene, "save_every": 4})).run(progress=False)
    shutil.rmtree(tmp_path / "plain" / "train_state")
    install_model(get_model(str(tmp_path / "plain" / "adv.json"), kind=None), replace=True)
    assert not adv.exists()  # a replaced model's adversaries do not stay beside weights they were not trained against
    install_model(get_model(str(tmp_path / "run" / "adv.json"), kind=None), replace=True)
    shutil.rmtree(tmp_path / "run")  # the run folder is gone, as a shipped model's is
    onward = SpadeTrainer(TrainOptions(out=str(tmp_path / "onward"), name="o", steps=4, critic=1.0, init="adv", **scene))
    assert onward.pretraining["discriminator"].startswith("the discriminator of") and "adv.adversaries" in onward.pretraining["discriminator"]
    assert onward.pretraining["critic"].startswith("the critic of")
    for net, name in ((onward.D, "discriminator"), (onward.C, "critic")):
        assert all(torch.equal(p, torch.from_numpy(kept[name][k])) for k, p in net.state_dict().items())
    shutil.rmtree(adv)  # without them: fresh ones, said in the record
    bare = SpadeTrainer(TrainOptions(out=str(tmp_path / "bare"), name="b", steps=4, critic=1.0, init="adv", **scene))
    assert bare.pretraining["discriminator"].startswith("fresh") and bare.pretraining["critic"].startswith("fresh")


# -- the critic: an image-level discriminator beside the PatchGANs ------------------------------------

def test_the_generator_learning_rate_warms_up_after_the_discriminator_and_the_first_step_is_smaller(tmp_path):
    """`--g-warmup N` raises the generator's learning rate linearly over its first N steps after `--d-warmup`: a
    generator taken on by --init starts with fresh Adam moments, whose first update moves every weight by about the
    full rate. Two fine-tunes of one start, alike but for the warm-up: the first update is 1/N as large."""
    scene = {**SMALL, "preset": "scene-tiny", "size": 64}
    SpadeTrainer(TrainOptions(out=str(tmp_path / "base"), name="base", steps=4, **{**scene, "save_every": 4})).run(progress=False)
    seen = {}
    for w in (0, 8):
        tr = SpadeTrainer(TrainOptions(out=str(tmp_path / f"w{w}"), name="ft", steps=12, d_warmup=2, g_warmup=w, lr_g=1e-3, seed=5,
                                       init=str(tmp_path / "base" / "base.json"), **{**scene, "save_every": 12}))
        lrs, moves, step = [], [], tr.opt_g.step

        def watched(*a, _step=step, _tr=tr, **k):  # the rate and how far the weights moved, at each generator update
            before = [q.detach().clone() for q in _tr.G.parameters()]
            lrs.append(_tr.opt_g.param_groups[0]["lr"])
            out = _step(*a, **k)
            moves.append(torch.cat([(q.detach() - b).flatten() for q, b in zip(_tr.G.parameters(), before)]))
            return out

        tr.opt_g.step = watched
        tr.run(progress=False)
        seen[w] = (lrs, moves, read_card(tmp_path / f"w{w}" / "ft.json").card["training"])
    (plain, _, card0), (warm, moves, card8) = seen[0], seen[8]
    assert plain == [1e-3] * 10 and np.allclose(warm, [1e-3 * min(1, k / 8) for k in range(1, 11)])  # 10 generator steps
    first0, first8 = seen[0][1][0], moves[0]
    ratio = float(first8.norm() / first0.norm())
    assert abs(ratio - 1 / 8) < 0.01, ratio  # Adam's first step is the rate times the gradient's sign: 1/8 of it
    assert card8["generator_lr_warmup_steps"] == 8 and "generator_lr_warmup_steps" not in card0
    for bad in (-1, 11):
        with pytest.raises(CmrError, match=f"--g-warmup {bad} must be 0 \\(off\\) or a number of generator steps up to the 10"):
            SpadeTrainer(TrainOptions(out=str(tmp_path / "bad"), name="ft", steps=12, d_warmup=2, g_warmup=bad, **scene))


def test_the_critic_learns_renders_from_real_slices_and_pushes_the_generator(tmp_path):
    """`--critic W` trains the machine reader's CNN beside the PatchGANs on the same real and rendered images (in the
    warm-up too) and adds W × its non-saturating loss to the generator's; it travels with the run's state, a resumed run
    must keep it, and bad weights or a private run are refused in one sentence."""
    from safetensors.numpy import load_file

    scene = {**SMALL, "preset": "scene-tiny", "size": 64, "log_every": 1}
    runs = {}
    for w in (0.0, 1.0):  # the same seed, data and warm-up; only the critic's weight differs
        out = tmp_path / f"c{w:g}"
        tr = SpadeTrainer(TrainOptions(out=str(out), name="c", steps=24, d_warmup=20, critic=w, lr_critic=3e-3, seed=3, **scene))
        tr.run(progress=False)
        runs[w] = (out, tr, [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()])
    out, tr, logged = runs[1.0]
    critic = [r["critic"] for r in logged if "critic" in r]
    assert len(critic) == 24 and all(np.isfinite(critic))  # every step, the warm-up included
    # an untrained tiny generator against phantom slices: the critic tells them apart (2 ln 2 = chance)
    assert np.mean(critic[-4:]) < 0.8 * 2 * np.log(2) and np.mean([r["critic_acc"] for r in logged[-4:]]) > 0.75
    assert all("g_critic" in r for r in logged if r["step"] > 20) and not any("critic" in r for r in runs[0.0][2])
    first = load_file(str(out / "train_state" / "critic.safetensors"))
    assert any(np.abs(v).sum() > 0 for v in first.values())
    a, b = (load_file(str(runs[w][0] / "c.safetensors")) for w in (0.0, 1.0))
    assert any(not np.allclose(a[k], b[k]) for k in a)  # its loss reached the generator
    # and pushes renders the way that makes the critic call them real: a small step down its gradient lowers the logit
    batch = next(iter(tr.loader))
    cond, real, vendor = batch["cond"], batch["image"], batch["vendor"]
    fake = tr.G(cond, vendor).detach().requires_grad_(True)
    tr._g_losses(tr.D, fake, real, cond, vendor)["g_critic"].backward()
    with torch.no_grad():
        before, after = tr.C(fake).mean(), tr.C(fake - 0.02 * fake.grad.sign()).mean()
    assert after < before - 0.05, (float(before), float(after))
    card = read_card(out / "c.json").card
    assert card["architecture"]["losses"]["critic"] == 1.0 and card["training"]["lr"]["critic"] == 3e-3
    assert "RealSynthCNN" in card["architecture"]["critic"] and card["architecture"]["critic_parameters"] == sum(
        p.numel() for p in tr.C.parameters())
    with pytest.raises(CmrError, match="--critic 1.0, not 0.0"):  # a resumed run keeps its critic
        SpadeTrainer(TrainOptions(out=str(out), name="c", steps=30, d_warmup=20, seed=3, resume=True, **scene))
    resumed = SpadeTrainer(TrainOptions(out=str(out), name="c", steps=30, d_warmup=20, critic=1.0, lr_critic=3e-3, seed=3, resume=True, **scene))
    resumed._load_state()
    assert all(torch.equal(p, torch.from_numpy(first[k])) for k, p in resumed.C.state_dict().items())  # and goes on from it
    # a new run from this one's model (--init) takes its critic too, as it takes its discriminator; from a run without one, a fresh one
    # (--critic-blur: the same weights seen through a [1 2 1] blur, so a critic is handed on either way)
    onward = SpadeTrainer(TrainOptions(out=str(tmp_path / "onward"), name="o", steps=4, critic=2.0, critic_blur=True,
                                       init=str(out / "c.json"), **scene))
    assert all(torch.equal(p, torch.from_numpy(first[k])) for k, p in onward.C.state_dict().items())
    assert onward.pretraining["critic"].startswith("the critic of") and onward.pretraining["discriminator"].startswith("the discriminator of")
    # the blurred critic is blind to a period-2 grid (stripes along either axis, however they vary along the other), the
    # plain one is not: so it can neither draw a generator towards such a grid nor away from it
    x = fake.detach()[:4]
    ramp = torch.linspace(0.5, 1.5, x.shape[-1])
    for stripes in (0.04 * (-1.0) ** torch.arange(x.shape[-2])[:, None] * ramp[None, :],
                    0.04 * ramp[:, None] * (-1.0) ** torch.arange(x.shape[-1])[None, :]):
        with torch.no_grad():
            assert torch.allclose(onward.C(x + stripes), onward.C(x), atol=1e-5)
            assert (tr.C(x + stripes) - tr.C(x)).abs().max() > 1e-3
    onward.run(progress=False)
    arch = read_card(tmp_path / "onward" / "o.json").card["architecture"]
    assert "blur" in arch["critic"] and "--critic-blur" in arch["critic"]
    with pytest.raises(CmrError, match="was trained with --critic-blur True, not False"):  # a resumed run keeps it
        SpadeTrainer(TrainOptions(out=str(tmp_path / "onward"), name="o", steps=6, critic=2.0, resume=True, init=str(out / "c.json"), **scene))
    fresh = SpadeTrainer(TrainOptions(out=str(tmp_path / "fresh"), name="f", steps=4, critic=2.0, init=str(runs[0.0][0] / "c.json"), **scene))
    assert fresh.pretraining["critic"].startswith("fresh (the critic of") and not any(
        torch.equal(p, torch.from_numpy(first[k])) for k, p in fresh.C.state_dict().items() if p.numel() > 1)
    for bad, said in ((dict(critic=-1.0), "--critic -1.0 must be 0"), (dict(critic=float("nan")), "--critic nan must be 0"),
                      (dict(critic=0.5, lr_critic=float("inf")), "--lr-critic inf must be a finite learning rate above 0"),
                      (dict(critic=0.5, lr_critic=0.0), "--lr-critic 0.0 must be a finite learning rate above 0"),
                      (dict(critic=0.5, dp_epsilon=5.0), "leave --critic out with --dp-epsilon")):
        with pytest.raises(CmrError, match=said):
            SpadeTrainer(TrainOptions(out=str(tmp_path / "bad"), name="bad", steps=4, **{**SMALL, **bad}))
    p = cli("train", "spade", "--phantom", "1", "--out", str(tmp_path / "cli"), "--critic", "-2", check=False)
    assert p.returncode != 0 and "--critic -2.0 must be 0" in p.stderr and not (tmp_path / "cli" / "spade.json").exists()
    p = cli("train", "spade", "--phantom", "1", "--out", str(tmp_path / "cli"), "--critic-blur", check=False)
    assert p.returncode != 0 and "--critic-blur changes what the critic sees, but there is no critic" in p.stderr


def test_the_feature_critic_learns_on_the_frozen_segmenter_and_pushes_the_generator(tmp_path):
    """`--feature-critic W` puts a linear logit on the Gram matrices of seg-cmr's first encoder levels, which stay the
    shipped segmenter's to the bit; only the logit learns, on the same real and rendered images as the PatchGANs, and
    W × its non-saturating loss reaches the generator; the card names the segmenter; a resumed run must keep it; bad
    weights and a private run are refused in one sentence."""
    from safetensors.numpy import load_file

    seg = get_model("seg-cmr", kind="segmenter")
    seg_w = load_file(str(seg.weights_path))
    scene = {**SMALL, "preset": "scene-tiny", "size": 64, "log_every": 1}
    out = tmp_path / "f"
    tr = SpadeTrainer(TrainOptions(out=str(out), name="f", steps=24, d_warmup=20, feature_critic=1.0, lr_critic=3e-3, seed=3, **scene))
    tr.run(progress=False)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    acc = [r["fcritic_acc"] for r in logged if "fcritic_acc" in r]
    assert len(acc) == 24  # every step, the warm-up included
    # an untrained tiny generator against phantom slices: fixed features and a linear head tell them apart at once
    assert np.mean(acc[-8:]) > 0.75 and np.mean([r["fcritic"] for r in logged[-4:]]) < 0.7 * 2 * np.log(2)
    assert all("g_fcritic" in r for r in logged if r["step"] > 20)
    state = load_file(str(out / "train_state" / "feature_critic.safetensors"))
    enc = {k[len("enc."):]: v for k, v in state.items() if k.startswith("enc.")}
    assert enc and all(np.array_equal(v, seg_w["downs." + k]) for k, v in enc.items())  # the segmenter, untouched
    assert np.abs(state["head.weight"]).sum() > 0  # the logit learned (it starts at 0)
    assert (state["sd"] > 0).all() and np.abs(state["mu"]).sum() > 0  # standardised by real windows' Gram statistics
    batch = next(iter(tr.loader))
    cond, real, vendor = batch["cond"], batch["image"], batch["vendor"]
    fake = tr.G(cond, vendor).detach().requires_grad_(True)
    tr._g_losses(tr.D, fake, real, cond, vendor)["g_fcritic"].backward()
    with torch.no_grad():  # a small step down the generator's gradient makes the feature critic call the render more real
        before, after = tr.Fc(fake).mean(), tr.Fc(fake - 0.02 * fake.grad.sign()).mean()
    assert after < before - 0.05, (float(before), float(after))
    card = read_card(out / "f.json").card
    assert card["architecture"]["losses"]["feature_critic"] == 1.0 and card["training"]["lr"]["feature_critic"] == 3e-3
    assert seg.card["sha256"] in card["architecture"]["feature_critic"] and "critic" not in card["architecture"]["losses"]
    assert card["architecture"]["feature_critic_parameters"] == state["head.weight"].size + 1
    with pytest.raises(CmrError, match="--feature-critic 1.0, not 0.0"):  # a resumed run keeps it
        SpadeTrainer(TrainOptions(out=str(out), name="f", steps=30, d_warmup=20, seed=3, resume=True, **scene))
    onward = SpadeTrainer(TrainOptions(out=str(tmp_path / "onward"), name="o", steps=4, feature_critic=0.5, init=str(out / "f.json"), **scene))
    assert onward.pretraining["critic"].startswith("the feature critic of")  # --init hands its head on
    assert np.array_equal(onward.Fc.head.weight.detach().numpy(), state["head.weight"])
    for bad, said in ((dict(feature_critic=-1.0), "--feature-critic -1.0 must be 0"),
                      (dict(feature_critic=float("inf")), "--feature-critic inf must be 0"),
                      (dict(feature_critic=0.5, dp_epsilon=5.0), "leave --feature-critic out with --dp-epsilon")):
        with pytest.raises(CmrError, match=said):
            SpadeTrainer(TrainOptions(out=str(tmp_path / "bad"), name="bad", steps=4, **{**SMALL, **bad}))
    p = cli("train", "spade", "--phantom", "1", "--out", str(tmp_path / "cli"), "--feature-critic", "-2", check=False)
    assert p.returncode != 0 and "--feature-critic -2.0 must be 0" in p.stderr and not (tmp_path / "cli" / "spade.json").exists()


def test_a_soup_averages_checkpoints_of_one_start_and_refuses_what_cannot_be_averaged(tmp_path):
    """`train soup` writes the mean of checkpoints trained on from one model, with a card naming its members, which
    renders like any model; members of another start, kind or privacy, one member, or one named twice, are refused."""
    from safetensors.numpy import load_file

    from cmrstudio.engine.factory import open_renderer

    scene = {**SMALL, "preset": "scene-tiny", "size": 64}
    SpadeTrainer(TrainOptions(out=str(tmp_path / "base"), name="base", steps=4, **{**scene, "save_every": 4})).run(progress=False)
    base = tmp_path / "base" / "base.json"
    SpadeTrainer(TrainOptions(out=str(tmp_path / "ft"), name="ft", steps=8, keep_checkpoints=True, init=str(base), grid=100.0,
                              **{**scene, "save_every": 4})).run(progress=False)
    a, b = sorted((tmp_path / "ft" / "checkpoints").glob("*.json"))
    text = run("train", "soup", str(a), str(b), "--out", str(tmp_path / "soup"), "--name", "mix").stdout
    assert "the mean of 2 checkpoints" in text
    soup = read_card(tmp_path / "soup" / "mix.json")
    verify(soup)
    wa, wb, ws = (load_file(str(p)) for p in (a.with_suffix(".safetensors"), b.with_suffix(".safetensors"), soup.weights_path))
    assert ws.keys() == wa.keys() and any(not np.array_equal(wa[k], wb[k]) for k in wa)
    for k in ws:
        np.testing.assert_allclose(ws[k], (wa[k].astype(np.float64) + wb[k]) / 2, rtol=1e-6, atol=1e-7)
    members = soup.card["training"]["soup"]["members"]
    assert [m["sha256"] for m in members] == [read_card(a).card["sha256"], read_card(b).card["sha256"]]
    assert "metrics" not in soup.card and soup.card["architecture"]["losses"]["grid_period2"] == 100.0  # the members agree
    run("train", "soup", str(b), str(a), "--out", str(tmp_path / "soup"), "--name", "mix-reversed")
    assert [read_card(tmp_path / "soup" / f"{n}.json").card["training"]["iterations"] for n in ("mix", "mix-reversed")] == [8, 8]
    masks = np.stack([phantom_case(seed=3, n_slices=2, shape=(64, 64)).mask[1]] * 2)
    renders = [open_renderer(str(p)).render_framed(masks, "siemens", seed=[1, 2]) for p in (a, b, soup.card_path)]
    assert np.isfinite(renders[2]).all() and 0 <= renders[2].min() and renders[2].max() <= 1
    assert all(np.abs(renders[2] - r).mean() > 1e-4 for r in renders[:2])  # a model of its own, not a copy of a member
    SpadeTrainer(TrainOptions(out=str(tmp_path / "ft2"), name="ft2", steps=4, init=str(base), **{**scene, "save_every": 4})).run(progress=False)
    run("train", "soup", str(a), str(tmp_path / "ft2" / "ft2.json"), "--out", str(tmp_path / "soup"), "--name", "mixed")
    mixed = read_card(tmp_path / "soup" / "mixed.json")
    assert "losses" not in mixed.card["architecture"]  # trained with different losses: each member's is in the soup's record
    assert [m["losses"].get("grid_period2") for m in mixed.card["training"]["soup"]["members"]] == [100.0, None]

    def refused(*args):
        res = cli("train", "soup", *map(str, args), "--out", str(tmp_path / "bad"), check=False)
        assert res.returncode != 0 and not (tmp_path / "bad").exists(), res.stdout
        return res.stderr

    assert "needs two members or more; 1 given" in refused(a)
    assert "named twice" in refused(a, a)
    msg = refused(a, base)
    assert "from scratch" in msg and "one starting model" in msg
    assert "records no starting model" in refused(base, a)
    assert "are different networks" in refused(a, "seg-cmr")
    assert "differentially private" in refused(a, "spade-dp")
