"""Plugins through the public generator API (cmrstudio.api): the two plugins in plugins/ (installed by
`installer/setup.sh test`) and broken fake plugins made here as real distributions with entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cmrstudio.errors import CmrError

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install -e plugins/cmrstudio-vae -e plugins/cmrstudio-torchscript (installer/setup.sh test does)"


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        pytest.skip(f"the plugin {module} is not installed: {INSTALL}")


@pytest.fixture
def plugins():
    _need("cmrstudio_vae"), _need("cmrstudio_torchscript")
    from cmrstudio.engine import factory

    factory.reload_plugins()
    yield
    factory.reload_plugins()


def run(*args, env=None, cwd=None, check=True):
    e = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "cmrstudio", *args], capture_output=True, text=True, encoding="utf-8", errors="replace", env=e, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"cmrstudio {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def phantom_mask(tmp_path: Path) -> Path:
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_volume

    mask = tmp_path / "m_gt.nii.gz"
    write_volume(mask, phantom_case(seed=2, n_slices=3).mask, np.diag([8, 1.25, 1.25, 1.0]))
    return mask


# ---- the built-ins use the same path ---------------------------------------------------------------------------------
def test_builtins_register_through_the_entry_point_group():
    from importlib.metadata import entry_points

    from cmrstudio import api
    from cmrstudio.engine import factory

    eps = {ep.name: ep for ep in entry_points(group=api.RENDERERS_GROUP)}
    assert eps["builtin"].value == factory.BUILTIN_ENTRY and eps["builtin"].dist.name == "cmrstudio"
    factory.reload_plugins()
    assert {"spade", "diffusion", "flow"} <= set(factory.generator_kinds())
    assert factory.SOURCES["spade"] == "cmrstudio" and factory.SPECS["spade"].live and factory.SPECS["flow"].steps
    assert api.API_VERSION.startswith(f"{api.API_MAJOR}.")
    r = factory.open_renderer("spade-cmr")
    assert isinstance(r, api.GeneratorFront) and r.source == "cmrstudio"


# ---- the two plugins ----------------------------------------------------------------------------------------------
def test_plugin_models_are_listed_with_checked_weights(plugins):
    from cmrstudio.models.registry import hq_models, list_models, live_models

    problems: list[str] = []
    models = {m.name: m for m in list_models(problems=problems)}
    assert not [p for p in problems if "plugin" in p], problems
    vae, ts = models["vae-cmr"], models["vae-cmr-ts"]
    assert (vae.kind, vae.origin, ts.kind, ts.origin) == ("vae", "plugin", "torchscript", "plugin")
    assert vae.card["plugin"] == "cmrstudio-vae" and ts.card["plugin"] == "cmrstudio-torchscript"
    assert len(vae.card["sha256"]) == 64 and vae.weights_path.stat().st_size < 10e6
    live = [m.name for m in live_models()]
    assert {"spade-cmr", "vae-cmr", "vae-cmr-ts"} <= set(live)  # what the studio's live list shows
    assert "vae-cmr" not in [m.name for m in hq_models()]
    # the card says what it was trained on, and which patients it never saw
    tr = vae.card["training"]
    assert "patient007" in tr["held_out_case_prefixes"] and tr["data"][0]["dataset"] == "acdc"
    assert vae.card["terms"] and vae.card["model_card"]


def test_models_command_lists_plugins(plugins):
    p = run("models", "--json", "--verify")
    rows = {r["name"]: r for r in json.loads(p.stdout)["models"]}
    assert rows["vae-cmr"]["origin"] == "plugin" and rows["vae-cmr"]["checksum"] == "ok"
    assert rows["vae-cmr-ts"]["kind"] == "torchscript" and rows["vae-cmr-ts"]["checksum"] == "ok"
    assert rows["spade-cmr"]["origin"] == "shipped"


def test_render_and_export_provenance_name_the_plugin_model(plugins, tmp_path):
    mask = phantom_mask(tmp_path)
    out = {}
    for name in ("vae-cmr", "vae-cmr-ts"):
        run("render", str(mask), "--model", name, "--seed", "3", "--out", str(tmp_path / f"{name}.nii.gz"), "--case-out", str(tmp_path / name))
        import nibabel as nib

        img = np.asarray(nib.load(str(tmp_path / f"{name}.nii.gz")).dataobj)
        assert img.shape == (160, 160, 3) or img.shape[::-1] == (3, 160, 160) or 3 in img.shape
        assert np.isfinite(img).all() and img.std() > 0.01
        out[name] = img
    # the TorchScript example is the VAE traced: same seed, same image
    assert np.allclose(out["vae-cmr"], out["vae-cmr-ts"], atol=1e-4)
    run("export", str(tmp_path / "vae-cmr"), str(tmp_path / "exp"), "--format", "nifti")
    from cmrstudio.models.registry import get_model

    sha = get_model("vae-cmr", kind="vae").card["sha256"]
    text = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "exp").rglob("*.json"))
    assert '"vae-cmr"' in text and sha in text


def test_vae_renders_in_process_and_live(plugins):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.live import LiveEngine

    r = open_renderer("vae-cmr", threads=1)
    assert r.one_step and not r.scene and r.source.startswith("cmrstudio-vae")
    c = phantom_case(seed=4, n_slices=2)
    frame = r.frame_for(c.mask, (8, 1.25, 1.25))
    a = r.render_framed(r.to_frame(c.mask[0], frame), "siemens", seed=1)
    assert a.shape == (128, 128) and np.array_equal(a, r.render_framed(r.to_frame(c.mask[0], frame), "siemens", seed=1))
    assert not np.array_equal(a, r.render_framed(r.to_frame(c.mask[0], frame), "siemens", seed=2))
    got = []
    with LiveEngine(r, on_ready=got.append) as eng:
        eng.submit(c.mask[0], frame, "siemens", 0)
        assert eng.wait_idle(60)
    assert got and got[-1].error is None and got[-1].image.shape == c.mask[0].shape
    assert got[-1].record.model == "vae-cmr" and got[-1].record.model_sha256 == r.info.card["sha256"]
    with pytest.raises(CmrError, match="one pass, no steps"):
        open_renderer("vae-cmr", steps=4)


def test_evaluate_runs_on_a_plugin_model(plugins, tmp_path):
    run("phantom", "--n", "2", "--out", str(tmp_path / "ph"))
    p = run("evaluate", "faithfulness", "--data", str(tmp_path / "ph"), "--model", "vae-cmr", "--seeds", "1", "--json")
    res = json.loads(p.stdout[p.stdout.index("{"):])
    assert res["generator"] == {"model": "vae-cmr", "kind": "vae"} and res["slices"] > 0
    assert 0.3 < res["synthetic"]["mean"] <= 1  # the segmenter finds the painted anatomy in the VAE's renders


# ---- broken plugins: named in one sentence, skipped; the others keep working ------------------------------------------
BROKEN_RENDERERS = '''
import numpy as np, torch
from cmrstudio.api import GeneratorFront, renderer, verify

class Net(torch.nn.Module):
    def forward(self, x):
        return x

class Boom(GeneratorFront):
    kinds = ("boom", "squash")
    one_step = True
    def load_network(self):
        verify(self.info)
        return Net()
    def _generate(self, framed, vendor_index, seed):
        if self.kind == "boom":
            raise RuntimeError("the network exploded")
        return np.zeros((len(framed), self.size // 2, self.size // 2), np.float32)   # the wrong shape

def open_(info, device=None, threads=None, **kw):
    return Boom(info, device=device, threads=threads)

def renderers():
    return [renderer("boom", open_, live=True), renderer("squash", open_, live=True), renderer("spade", open_, live=True),
            renderer("future", open_, api=99)]

def models():
    return __import__("pathlib").Path(__file__).parent / "models"
'''


def make_dist(root: Path, name: str, module: str, code: str, entry_points: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    d = root / f"{name.replace('-', '_')}-0.1.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (d / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def fake_model(folder: Path, name: str, kind: str, sha: str | None = None, weights: bool = True) -> None:
    from cmrstudio.models.checkpoint import save_model

    import torch

    info = save_model(folder, name, {"w": torch.zeros(2)}, {"kind": kind, "architecture": {"name": "fake"}, "frame": {"size": 32, "spacing_mm": 5.0}})
    card = json.loads(info.card_path.read_text(encoding="utf-8"))
    if sha:
        card["sha256"] = sha
        info.card_path.write_text(json.dumps(card))
    if not weights:
        info.weights_path.unlink()


@pytest.fixture
def broken(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    make_dist(root, "cmr-broken", "cmr_broken", BROKEN_RENDERERS,
              "[cmrstudio.renderers]\nbroken = cmr_broken:renderers\n[cmrstudio.generators]\nbroken = cmr_broken:models\n")
    make_dist(root, "cmr-noimport", "cmr_noimport", "import cmr_no_such_module_xyz\n",
              "[cmrstudio.renderers]\nnoimport = cmr_noimport:renderers\n[cmrstudio.generators]\nnoimport = cmr_noimport:models\n")
    models = root / "models"
    fake_model(models, "boom-model", "boom")
    fake_model(models, "squash-model", "squash")
    fake_model(models, "unsure-model", "boom", sha="0" * 64)  # a checksum that does not match
    fake_model(models, "gone-model", "boom", weights=False)  # weights missing
    fake_model(models, "orphan-model", "nobody-serves-this")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    from cmrstudio.engine import factory

    factory.reload_plugins()
    yield root
    monkeypatch.undo()
    factory.reload_plugins()


def test_broken_plugins_are_named_and_skipped(broken):
    from cmrstudio.engine import factory
    from cmrstudio.models.registry import list_models

    problems: list[str] = []
    names = {m.name for m in list_models(problems=problems)}
    assert {"spade-cmr", "flow-cmr", "boom-model", "squash-model"} <= names
    assert not names & {"unsure-model", "gone-model", "orphan-model"}
    text = "\n".join(problems)
    assert "The renderer plugin 'cmr-noimport (noimport)' failed to load (ModuleNotFoundError" in text
    assert "The model plugin 'cmr-noimport' failed to load (ModuleNotFoundError" in text
    assert "'unsure-model' of the plugin 'cmr-broken' do not match the sha256" in text
    assert "'gone-model' of the plugin 'cmr-broken' has no weights file" in text
    assert "'orphan-model' of the plugin 'cmr-broken' is of kind 'nobody-serves-this'" in text
    assert "claims the kind 'spade', which 'cmrstudio' already serves" in text and factory.SOURCES["spade"] == "cmrstudio"
    assert "written for generator API 99" in text and "future" not in factory.generator_kinds()
    for p in problems:
        assert p.count(". ") == 0 or "…" in p, p  # one sentence each
    # the built-in models still render
    r = factory.open_renderer("spade-cmr")
    assert r.render_framed(np.zeros((128, 128), np.uint8)).shape == (128, 128)


def test_a_plugin_render_that_raises_or_returns_the_wrong_shape_is_one_sentence(broken, tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.live import LiveEngine

    boom, squash = open_renderer("boom-model"), open_renderer("squash-model")
    m = np.zeros((32, 32), np.uint8)
    with pytest.raises(CmrError, match=r"The model 'boom-model' \(from the plugin 'cmr-broken \(broken\)'\) failed to render \(RuntimeError: the network exploded\)"):
        boom.render_framed(m)
    with pytest.raises(CmrError, match=r"'squash-model' .*returned images of shape \(1, 16, 16\) where \(1, 32, 32\) was asked for"):
        squash.render_framed(m)
    # the live engine reports it in the result and keeps serving
    c = phantom_case(seed=1, n_slices=1)
    got = []
    with LiveEngine(boom, on_ready=got.append) as eng:
        eng.submit(c.mask[0], boom.frame_for(c.mask), "unknown", 0)
        assert eng.wait_idle(30)
        assert got[-1].error and "failed to render" in got[-1].error
    # through the CLI: exit 2, one line, no traceback, nothing written; the built-in model renders afterwards
    mask = phantom_mask(tmp_path)
    for name, words in (("boom-model", "failed to render"), ("squash-model", "returned images of shape"),
                        ("unsure-model", "No model is named 'unsure-model'")):
        p = run("render", str(mask), "--model", name, "--out", str(tmp_path / "o.nii.gz"), check=False)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not (tmp_path / "o.nii.gz").exists()
    p = run("models")
    assert "boom-model" in p.stdout and "spade-cmr" in p.stdout and "warning: The renderer plugin 'cmr-noimport" in p.stderr
    run("render", str(mask), "--model", "spade-cmr", "--out", str(tmp_path / "ok.nii.gz"))
