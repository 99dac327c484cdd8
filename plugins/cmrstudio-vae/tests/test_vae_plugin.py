"""The cmrstudio-vae plugin on its own: entry points, the shipped model and its checksum, the renderer, training."""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pytest

vae_installed = pytest.importorskip("cmrstudio_vae", reason="the plugin is not installed: pip install -e plugins/cmrstudio-vae (installer/setup.sh test does)")

from cmrstudio.api import API_MAJOR, CmrError, RendererSpec, read_card, sha256_file

import cmrstudio_vae
from cmrstudio_vae.net import CondVAE, VAEConfig


def test_entry_points_and_spec():
    eps = {(ep.group, ep.name): ep.value for ep in distribution("cmrstudio-vae").entry_points}
    assert eps[("cmrstudio.renderers", "vae")] == "cmrstudio_vae:renderers"
    assert eps[("cmrstudio.generators", "vae")] == "cmrstudio_vae:models"
    (spec,) = cmrstudio_vae.renderers()
    assert isinstance(spec, RendererSpec) and spec.kind == "vae" and spec.live and not spec.steps and spec.api == API_MAJOR


def test_shipped_model_card_and_checksum():
    info = read_card(Path(cmrstudio_vae.models()) / "vae-cmr.json", origin="plugin")
    assert info.kind == "vae" and sha256_file(info.weights_path) == info.card["sha256"]
    assert info.weights_path.stat().st_size < 8e6  # a few MB
    tr = info.card["training"]
    assert tr["iterations"] > 500 and tr["seconds"] <= 25 * 60 and "1 torch thread" in tr["hardware"]
    assert {"patient007", "patient095"} <= set(tr["held_out_case_prefixes"])
    assert all(d["dataset"] == "acdc" for d in tr["data"])
    assert "non-commercial" in info.card["terms"]
    net = CondVAE(VAEConfig.from_dict(info.card["architecture"]["options"]))
    assert sum(p.numel() for p in net.parameters()) == info.card["architecture"]["parameters"]


def test_config_refuses_unknown_options():
    with pytest.raises(ValueError, match="unknown options"):
        VAEConfig.from_dict({"size": 128, "depth": 3})
    with pytest.raises(ValueError, match="not divisible"):
        VAEConfig.from_dict({"size": 100})


def test_renderer_is_deterministic_per_seed_and_checks_labels():
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.engine.factory import open_renderer

    r = open_renderer(read_card(Path(cmrstudio_vae.models()) / "vae-cmr.json", origin="plugin"), threads=1)
    c = phantom_case(seed=5, n_slices=2)
    frame = r.frame_for(c.mask, (8, 1.25, 1.25))
    m = r.to_frame(c.mask[1], frame)
    a = r.render_framed(m, "siemens", seed=4)
    assert a.shape == (128, 128) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, r.render_framed(m, "siemens", seed=4))
    assert np.abs(a - r.render_framed(m, "siemens", seed=5)).mean() > 1e-3
    # the anatomy comes from the mask: the LV blood pool is brighter than the myocardium around it
    assert a[m == 1].mean() > a[m == 2].mean() + 0.05
    batch = r.render_framed(np.stack([m, m]), "siemens", seed=[4, 5])
    assert np.allclose(batch[0], a, atol=1e-5)
    bad = m.copy()
    bad[0, 0] = 9
    with pytest.raises(CmrError, match="holds label 9"):
        r.render_framed(bad)
    native, framed = r.render_slice(c.mask[1], frame, "philips", seed=1)
    assert native.shape == c.mask[1].shape and framed.shape == (128, 128)


def test_training_writes_a_model_the_renderer_opens(tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.io import write_case
    from cmrstudio_vae.train import main

    data = tmp_path / "data"
    for i in range(2):
        write_case(phantom_case(seed=i, n_slices=3), data)
    main(["--data", str(data), "--out", str(tmp_path / "out"), "--name", "tiny-vae", "--steps", "2", "--batch", "2", "--exclude"])
    card = json.loads((tmp_path / "out" / "tiny-vae.json").read_text(encoding="utf-8"))
    assert card["kind"] == "vae" and card["training"]["iterations"] == 2
    r = open_renderer(read_card(tmp_path / "out" / "tiny-vae.json"))
    assert r.render_framed(np.zeros((128, 128), np.uint8)).shape == (128, 128)
