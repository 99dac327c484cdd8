"""On-demand HQ rendering: diffusion and flow models, samplers, jobs, CLI, the shipped models."""

import json
import shutil
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from cmrstudio.data.phantom import phantom_case
from cmrstudio.engine.hq import HQRenderer, JobQueue, SceneHQRenderer
from cmrstudio.record import Render
from cmrstudio.engine.factory import open_renderer
from cmrstudio.engine.live import LiveEngine, Renderer
from cmrstudio.errors import CmrError
from cmrstudio.io import write_volume
from cmrstudio.models.checkpoint import read_card, sha256_file, verify
from cmrstudio.models.diffusion import PRESETS, CondUNet, DiffusionConfig
from cmrstudio.models.registry import get_model
from cmrstudio.models.sampling import Cancelled, noise_for, sample
from cmrstudio.models.spade import onehot
from cmrstudio.resources import resources_dir
from cmrstudio.train.diffusion import DiffusionOptions, DiffusionTrainer

from conftest import shared
from helpers import cli, run

TINY = dict(phantom=4, size=64, batch=4, preset="tiny", sample_every=20, save_every=1000, log_every=5, warmup=5, lr=1e-3,
            sample_steps=3)


def _train(tmp_path_factory, objective: str, steps: int = 60) -> DiffusionTrainer:
    out = tmp_path_factory.mktemp(objective) / "run"
    tr = DiffusionTrainer(DiffusionOptions(objective=objective, out=str(out), name=f"tiny-{objective}", steps=steps, **TINY))
    tr.loss_before = tr.fixed_loss()
    tr.run(progress=False)
    tr.loss_after = tr.fixed_loss()
    return tr


@pytest.fixture(scope="module")
def tiny_diffusion(tmp_path_factory):
    return _train(tmp_path_factory, "diffusion")


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    return _train(tmp_path_factory, "flow")


def _card(tr) -> str:
    return str(tr.out / f"{tr.opts.name}.json")


@pytest.mark.parametrize("which", ["tiny_diffusion", "tiny_flow"])
def test_training_loss_falls_and_writes_grids_and_card(which, request):
    tr = request.getfixturevalue(which)
    # the loss on fixed masks, times and noise falls
    assert tr.loss_after < 0.8 * tr.loss_before, (tr.loss_before, tr.loss_after)
    assert [p.name for p in sorted((tr.out / "samples").glob("step_*.png"))][:2] == ["step_000000.png", "step_000020.png"]
    card = json.loads((tr.out / f"{tr.opts.name}.json").read_text(encoding="utf-8"))
    assert card["kind"] == tr.opts.objective and card["process"]["objective"] == tr.opts.objective
    assert card["sampling"] == {"steps": 3, "guidance": 1.5, "solver": "ddim" if tr.opts.objective == "diffusion" else "euler",
                                "guidance_null": "all-zero mask"}
    assert card["sha256"] == sha256_file(tr.out / f"{tr.opts.name}.safetensors")
    assert card["training"]["iterations"] == 60 and card["training"]["cond_drop"] == 0.1
    assert card["architecture"]["options"]["size"] == 64
    from PIL import Image

    grid = np.asarray(Image.open(tr.out / "samples" / "latest.png"))
    assert grid.shape[0] == 4 * 64 and grid[2 * 64:].std() > 5  # mask row, real row, two sampled rows


def test_network_conditioning_mask_and_vendor_both_change_the_output():
    cfg = DiffusionConfig(size=64, base=16, mults=(1, 2, 2), attention=False, spade_hidden=16, time_dim=64)
    net = CondUNet(cfg).eval()
    torch.manual_seed(0)
    for p in net.parameters():  # zero-initialised outputs: perturb so every path matters
        p.data.add_(0.05 * torch.randn_like(p))
    mask = torch.from_numpy(phantom_case(seed=1, n_slices=1, shape=(64, 64)).mask.astype(np.int64))
    x, t = torch.randn(1, 1, 64, 64), torch.tensor([0.5])
    with torch.no_grad():
        a = net(x, t, onehot(mask), torch.tensor([0]))
        b = net(x, t, onehot(mask), torch.tensor([2]))
        c = net(x, t, torch.zeros_like(onehot(mask)), torch.tensor([0]))
    assert a.shape == x.shape
    assert float((a - b).abs().mean()) > 1e-3 and float((a - c).abs().mean()) > 1e-3


@pytest.mark.parametrize("which", ["tiny_diffusion", "tiny_flow"])
def test_sampling_is_reproducible_for_a_seed_and_reports_every_step(which, request):
    r = HQRenderer(read_card(_card(request.getfixturevalue(which))))
    m = phantom_case(seed=2, n_slices=1, shape=(64, 64)).mask[0]
    steps = list(r.sample_framed(m, "ge", seed=5, steps=4))
    assert [s.step for s in steps] == [1, 2, 3, 4] and [s.done for s in steps] == [False, False, False, True]
    assert all(s.preview.shape == (1, 64, 64) and 0 <= s.preview.min() and s.preview.max() <= 1 for s in steps)
    a = list(r.sample_framed(m, "ge", seed=5, steps=4))[-1].image
    b = list(r.sample_framed(m, "ge", seed=6, steps=4))[-1].image
    assert np.array_equal(a, steps[-1].image)  # same seed, same image
    assert float(np.abs(a - b).mean()) > 1e-3  # another seed, another image


def _perturbed_scene_net(seed: int = 0) -> CondUNet:
    net = CondUNet(DiffusionConfig(**{**PRESETS["scene-tiny"].to_dict(), "size": 64})).eval()
    torch.manual_seed(seed)
    for p in net.parameters():  # zero-initialised outputs: perturb so every path matters
        p.data.add_(0.05 * torch.randn_like(p))
    return net


def _euler_by_hand(net, cond, v, noise, steps, guidance, bf16, shift=1.0):
    """The flow sampler written out plainly: every step runs the whole network, conditioning included."""
    x = noise.clone()
    ts = [shift * t / (1 + (shift - 1) * t) for t in torch.linspace(1.0, 0.0, steps + 1).tolist()]
    with torch.inference_mode():
        for t, s in zip(ts[:-1], ts[1:]):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                tt = torch.full((1,), t)
                if guidance == 1.0:
                    out = net(x, tt, cond, v).float()
                else:  # both branches in one batch, as the sampler runs them
                    out, un = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, torch.zeros_like(cond)]),
                                  torch.cat([v, v])).float().chunk(2)
                    out = un + guidance * (out - un)
            x = x - (t - s) * out
    return ((x[:, 0].clamp(-1, 1).numpy() + 1) / 2).astype(np.float32)


@pytest.mark.parametrize("guidance,bf16", [(1.0, False), (2.0, False), (1.0, True)])
def test_sampler_reuses_the_conditioning_maps_and_renders_the_same_to_the_bit(guidance, bf16):
    """The decoder's per-pixel scale and shift depend on the conditioning alone: the sampler makes them once per
    render instead of at every step, and the image is exactly what running the whole network every step gives."""
    net = _perturbed_scene_net()
    torch.manual_seed(1)
    cond = torch.rand(1, net.cfg.cond_channels, 64, 64)
    v, noise = torch.tensor([1]), noise_for(3, 64)
    calls = []
    spatial = [m for m in net.modules() if type(m).__name__ == "SpatialNorm"]
    hooks = [m.gamma_beta.register_forward_hook(lambda *a: calls.append(1)) for m in spatial]
    try:
        steps = list(sample(net, "flow", cond, v, noise, 5, guidance, "euler", bf16=bf16))
    finally:
        for h in hooks:
            h.remove()
    assert len(spatial) >= 10 and len(calls) == len(spatial)  # once per render, not once per step (5 steps)
    assert np.array_equal(steps[-1].image, _euler_by_hand(net, cond, v, noise, 5, guidance, bf16))
    other = list(sample(net, "flow", torch.rand(1, net.cfg.cond_channels, 64, 64), v, noise, 5, guidance, "euler", bf16=bf16))
    assert float(np.abs(other[-1].image - steps[-1].image).mean()) > 1e-3  # maps belong to one render, not kept across


class _GridNet(torch.nn.Module):
    """A velocity network whose clean image is a smooth function of the conditioning (shift-equivariant) plus, with
    ``grid``, stripes and a checkerboard locked to its own pixel grid, as a patch-2 network can draw."""

    size_unit = 16

    def __init__(self, grid: float):
        super().__init__()
        self.grid = grid

    def forward(self, x, t, onehot, vendor):
        n = x.shape[-1]
        sign = (-1.0) ** torch.arange(n)
        pattern = sign[None, :] + sign[:, None] * sign[None, :]  # stripes along the columns and a checkerboard
        clean = 1.2 * torch.nn.functional.avg_pool2d(onehot[:, :1], 5, 1, 2, count_include_pad=False) - 0.6 + self.grid * pattern
        return (x - clean) / t[:, None, None, None]  # the velocity that lands on ``clean`` from anywhere


class _CellNet(_GridNet):
    """A velocity network that, with ``grid``, draws where the tissue-class fractions bend: their cells of 2 px are
    interpolated between cell centres, so the bends fall every other pixel, on the scene's grid, not the network's."""

    def forward(self, x, t, onehot, vendor):
        lay = onehot[:, 3:4]
        bend = torch.zeros_like(lay)
        bend[..., 1:-1, :] += (lay[..., 2:, :] - 2 * lay[..., 1:-1, :] + lay[..., :-2, :]).abs()
        bend[..., :, 1:-1] += (lay[..., :, 2:] - 2 * lay[..., :, 1:-1] + lay[..., :, :-2]).abs()
        clean = 1.2 * torch.nn.functional.avg_pool2d(onehot[:, :1], 5, 1, 2, count_include_pad=False) - 0.6 + self.grid * bend
        return (x - clean) / t[:, None, None, None]


def test_a_scenes_tissue_classes_are_held_still_over_the_shifts_so_their_cell_grid_cancels_too():
    """The shifts move the image against the network's patch grid, and the conditioning with it. A scene's tissue
    classes come on cells of 2 px of the scene's own grid: moved with the image, what the network draws along their
    cells comes back in the same place every time and adds up to a period-2 grid (the HQ default's fully synthetic peak
    ratio 6.8 on 259 held-out slices, a real scan's 2.0). Held still (``still``), it changes phase with the offset and
    cancels; the heart, which moves with the image, lands where it did."""
    from cmrstudio.data.scene import CONDITION_CHANNELS, LAYOUT_CHANNELS, upsample_layout
    from cmrstudio.evaluate.realism import grid_artefact
    from cmrstudio.models.sampling import run_to_end

    rng = np.random.default_rng(0)
    noise, v = torch.randn(8, 1, 80, 80, generator=torch.Generator().manual_seed(0)), torch.zeros(8, dtype=torch.long)
    cond = torch.zeros(8, CONDITION_CHANNELS, 80, 80)
    cond[:, :1] = torch.from_numpy(rng.random((8, 1, 80, 80), np.float32))
    cells = rng.dirichlet(np.ones(5), (8, 40, 40)).transpose(0, 3, 1, 2).astype(np.float32)
    cond[:, LAYOUT_CHANNELS] = torch.from_numpy(np.stack([upsample_layout(c, (80, 80)) for c in cells]))
    inner = np.s_[:, 8:-8, 8:-8]

    def render(grid, shifts, still=None):
        return run_to_end(sample(_CellNet(grid), "flow", cond, v, noise, 2, 1.0, "euler", shifts=shifts, still=still))[inner]

    clean, held = render(0.0, 4, LAYOUT_CHANNELS), render(0.5, 4, LAYOUT_CHANNELS)
    g = {name: grid_artefact(im)["peak_ratio"] for name, im in
         (("clean", clean), ("plain", render(0.5, 1)), ("moved", render(0.5, 4)), ("held", held))}
    assert g["plain"] > 10 * g["clean"] and g["moved"] > 10 * g["clean"], g  # the patch grid's offsets alone leave it
    assert g["held"] < 1.5 * g["clean"], g
    np.testing.assert_allclose(clean, render(0.0, 1), atol=1e-5)  # nothing of the heart moved
    assert np.abs(held - clean).mean() > 1e-3  # what is drawn along the cells is still drawn, only not on a grid
    # the HQ scene renderer holds its tissue classes; its record and card say so
    assert SceneHQRenderer.still == LAYOUT_CHANNELS and HQRenderer.still is None


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_averaging_each_step_over_the_patch_grids_offsets_cancels_a_pixel_locked_grid_and_nothing_else(guidance, tiny_flow, tmp_path):
    """``shifts`` 4 (cycle spinning): each step runs the network on the input shifted by the 4 offsets of its 2-px patch
    grid in one batch and averages the outputs shifted back. A grid locked to the network's pixels cancels (the
    detector's peak falls to a real scan's), a shift-equivariant network renders what it renders without it (away from
    the edges, which are padded), and the conditioning-only maps a real network keeps for a render stay right."""
    from pathlib import Path

    from cmrstudio.evaluate.realism import grid_artefact
    from cmrstudio.models.sampling import run_to_end
    from cmrstudio.record import make_record
    from helpers import copy_model

    torch.manual_seed(0)
    noise, cond, v = torch.randn(8, 1, 80, 80), torch.rand(8, 4, 80, 80), torch.zeros(8, dtype=torch.long)
    inner = np.s_[:, 8:-8, 8:-8]  # 64 px away from the padded edges

    def render(net, k):
        return run_to_end(sample(net, "flow", cond, v, noise, 2, guidance, "euler", shifts=k))[inner]

    clean, plain, spun = render(_GridNet(0.0), 1), render(_GridNet(0.02), 1), render(_GridNet(0.02), 4)
    g = {name: grid_artefact(im)["peak_ratio"] for name, im in (("clean", clean), ("plain", plain), ("spun", spun))}
    assert g["plain"] > 10 * g["clean"] and g["spun"] < 1.5 * g["clean"], g
    np.testing.assert_allclose(spun, clean, atol=1e-5)
    assert np.abs(plain - clean).mean() > 0.005  # the grid itself: 0.01 on average
    # a real scene network: the maps kept over the render's steps are those of the 4 shifted copies
    net = _perturbed_scene_net()
    c1, v1, n1 = torch.rand(1, net.cfg.cond_channels, 64, 64), torch.tensor([1]), noise_for(3, 64)

    class NoMaps(torch.nn.Module):  # the same network without the sampler's map store: every step computes everything
        size_unit = net.size_unit

        def forward(self, x, t, onehot, vendor):
            return net(x, t, onehot, vendor)

    kept = run_to_end(sample(net, "flow", c1, v1, n1, 3, guidance, "euler", shifts=4))
    np.testing.assert_allclose(kept, run_to_end(sample(NoMaps(), "flow", c1, v1, n1, 3, guidance, "euler", shifts=4)), atol=1e-5)
    assert np.abs(kept - run_to_end(sample(net, "flow", c1, v1, n1, 3, guidance, "euler"))).mean() > 1e-4
    # a card asks for it; the record says so; bad values get one sentence
    card = copy_model(Path(_card(tiny_flow)), tmp_path / f"spun{guidance}")
    doc = json.loads(card.read_text(encoding="utf-8"))
    doc["sampling"]["shifts"] = 4
    card.write_text(json.dumps(doc), encoding="utf-8")
    r = HQRenderer(read_card(card), bf16=False)
    assert r.shifts == 4 and HQRenderer(read_card(card), shifts=1).shifts == 1
    assert make_record(r, 4, "siemens").sampler == "euler, averaged over 4 shifts"
    for bad in (3, 0, "four", True):
        doc["sampling"]["shifts"] = bad
        card.write_text(json.dumps(doc), encoding="utf-8")
        with pytest.raises(CmrError, match=r"names sampling.shifts .* it must be 1 .* or 4 .* remove it from the card"):
            HQRenderer(read_card(card))
    with pytest.raises(CmrError, match=r"--shifts 2 must be 1 .* or 4"):
        HQRenderer(read_card(_card(tiny_flow)), shifts=2)


def test_a_cards_time_shift_puts_the_steps_nearer_the_noise_and_renders_are_recorded_with_it(tiny_flow, tmp_path):
    from pathlib import Path

    from cmrstudio.models.sampling import run_to_end, time_grid
    from cmrstudio.record import make_record
    from helpers import copy_model

    assert time_grid(5) == torch.linspace(1.0, 0.0, 6).tolist()  # no shift: the uniform grid, as before
    g = time_grid(8, 3.0)
    assert g[0] == 1.0 and g[-1] == 0.0 and all(a > b for a, b in zip(g, g[1:]))
    assert g[0] - g[1] < 1 / 8 < g[-2] - g[-1]  # small steps near the noise, a large last one
    card = copy_model(Path(_card(tiny_flow)), tmp_path / "shifted")
    doc = json.loads(card.read_text(encoding="utf-8"))
    doc["sampling"]["time_shift"] = 3.0
    card.write_text(json.dumps(doc), encoding="utf-8")
    plain, shifted = HQRenderer(read_card(_card(tiny_flow)), bf16=False), HQRenderer(read_card(card), bf16=False)
    assert plain.time_shift == 1.0 and shifted.time_shift == 3.0
    m = phantom_case(seed=2, n_slices=1, shape=(64, 64)).mask
    a = run_to_end(plain.sample_framed(m, "siemens", seed=4, steps=4, guidance=1.0))
    b = run_to_end(shifted.sample_framed(m, "siemens", seed=4, steps=4, guidance=1.0))
    assert float(np.abs(a - b).mean()) > 1e-3  # the same weights, another grid
    cond, v = onehot(torch.from_numpy(m.astype(np.int64))), torch.tensor([plain.resolve_vendor("siemens")[0]])
    assert np.array_equal(b, _euler_by_hand(shifted.net, cond, v, noise_for(4, 64), 4, 1.0, False, shift=3.0))
    assert make_record(shifted, 4, "siemens").sampler == "euler, time shift 3" and make_record(plain, 4, "siemens").sampler == "euler"
    with JobQueue(shifted) as q:  # the studio's HQ path records the shift too
        job = q.wait(q.submit(m[0], shifted.frame_for(m), "siemens", 4, steps=2), 60)
    assert job.status == "done" and job.result.record.sampler == "euler, time shift 3"
    for bad in (-1, "fast", True, float("inf")):
        doc["sampling"]["time_shift"] = bad
        card.write_text(json.dumps(doc), encoding="utf-8")
        with pytest.raises(CmrError, match=r"shifted/tiny-flow.json names sampling.time_shift .* must be a number above 0 .* remove it"):
            HQRenderer(read_card(card))


def test_weights_stored_in_bf16_give_autocast_the_same_result_and_hq_renderers_store_them(tiny_flow):
    import copy

    from cmrstudio.engine.device import autocast_weights

    net = _perturbed_scene_net(2)
    fast = autocast_weights(copy.deepcopy(net))
    assert fast.inp.weight.dtype == torch.bfloat16 and fast.time[0].weight.dtype == torch.bfloat16
    assert fast.out_norm.weight.dtype == torch.float32 and fast.vendor.weight.dtype == torch.float32  # autocast keeps these fp32
    torch.manual_seed(3)
    x, cond = torch.randn(2, 1, 64, 64), torch.rand(2, net.cfg.cond_channels, 64, 64)
    args = (x, torch.tensor([0.3, 0.9]), cond, torch.tensor([0, 2]))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(net(*args), fast(*args))
    assert HQRenderer(read_card(_card(tiny_flow)), bf16=True).net.inp.weight.dtype == torch.bfloat16
    assert HQRenderer(read_card(_card(tiny_flow)), bf16=False).net.inp.weight.dtype == torch.float32


def test_cancel_stops_the_sampler_before_its_next_step(tiny_diffusion):
    net = tiny_diffusion.ema
    m = torch.from_numpy(phantom_case(seed=2, n_slices=1, shape=(64, 64)).mask.astype(np.int64))
    cancel = threading.Event()
    seen = []
    with pytest.raises(Cancelled):
        for st in sample(net, "diffusion", onehot(m), torch.zeros(1, dtype=torch.long), noise_for(0, 64), 10, cancel=cancel):
            seen.append(st.step)
            if st.step == 3:
                cancel.set()
    assert seen == [1, 2, 3]


def test_job_queue_runs_jobs_in_order_with_progress_cancel_and_saved_results(tiny_flow, tmp_path):
    r = HQRenderer(read_card(_card(tiny_flow)))
    case = phantom_case(seed=3, n_slices=2, shape=(90, 100), vendor="siemens")
    frame = r.frame_for(case.mask)
    progress: dict[int, list[int]] = {}
    done: list[tuple[int, str]] = []
    holder = {}

    def on_progress(job):
        progress.setdefault(job.id, []).append(job.step)
        assert job.preview.shape == (64, 64)
        if job.id == holder.get("cancel_at") and job.step == 2:
            holder["queue"].cancel(job.id)

    with JobQueue(r, on_progress=on_progress, on_done=lambda j: done.append((j.id, j.status))) as q:
        holder["queue"] = q
        a = q.submit(case.mask[1], frame, "siemens", seed=1, steps=5)
        b = q.submit(case.mask[1], frame, "siemens", seed=1, steps=6)
        c = q.submit(case.mask[0], frame, "ge", seed=2, steps=3)
        holder["cancel_at"] = b
        d = q.submit(case.mask[0], frame, "ge", seed=2, steps=3)
        q.cancel(d)  # cancelled while still queued: never runs
        assert q.wait_idle(60)
        ja, jb, jc, jd = (q.job(i) for i in (a, b, c, d))
    assert (ja.status, jb.status, jc.status, jd.status) == ("done", "cancelled", "done", "cancelled")
    assert progress[a] == [1, 2, 3, 4, 5] and progress[b] == [1, 2] and progress[c] == [1, 2, 3] and d not in progress
    assert [i for i, _ in done] == [d, a, b, c]  # finished in order; the queued cancel is reported at once
    res = ja.result
    assert res.image.shape == (90, 100) and res.params["steps"] == 5 and res.params["kind"] == "flow"
    assert res.params["model_sha256"] == r.info.card["sha256"]
    # saved and read back: the same pixels, mask, frame and parameters
    paths = res.save(tmp_path / "kept", "render_001")
    assert {"image", "mask", "json"} <= set(paths)
    back = Render.load(tmp_path / "kept", "render_001")
    assert np.allclose(back.image, res.image, atol=1e-6) and np.array_equal(back.mask, case.mask[1])
    assert back.params == res.params and back.frame.to_dict() == res.frame.to_dict()
    side = json.loads((tmp_path / "kept" / "render_001.json").read_text(encoding="utf-8"))
    assert side["source"]["synthetic"] is True
    # a damaged sidecar: one sentence naming the file
    (tmp_path / "kept" / "render_001.json").write_text("{broken")
    with pytest.raises(CmrError, match="render_001.json"):
        Render.load(tmp_path / "kept", "render_001")


def test_job_queue_gives_way_to_the_live_path_and_survives_bad_jobs(tiny_flow):
    r = HQRenderer(read_card(_card(tiny_flow)))
    case = phantom_case(seed=3, n_slices=1, shape=(64, 64))
    frame = r.frame_for(case.mask)
    live_busy_until = time.perf_counter() + 0.3
    with JobQueue(r, yield_to=lambda: time.perf_counter() < live_busy_until) as q:
        j = q.wait(q.submit(case.mask[0], frame, steps=2), 30)
        assert j.status == "done" and q.waited_s >= 0.2
        with pytest.raises(CmrError, match="steps 0"):
            q.submit(case.mask[0], frame, steps=0)
        with pytest.raises(CmrError, match="--solver 'ddim' does not fit the flow model"):
            q.submit(case.mask[0], frame, solver="ddim")
        bad = case.mask[0].copy()
        bad[0, 0] = 9
        with pytest.raises(CmrError, match="label 9"):
            q.submit(bad, frame)
        other = phantom_case(seed=3, n_slices=1, shape=(50, 50)).mask[0]  # does not fit the frame: the job fails, the queue goes on
        failed = q.wait(q.submit(other, frame, steps=2), 30)
        assert failed.status == "failed" and "frame was made for 64×64" in failed.error
        assert q.wait(q.submit(case.mask[0], frame, steps=2), 30).status == "done"


def test_live_engine_reports_busy_while_rendering(tiny_run):
    r = Renderer(read_card(tiny_run.out / "tiny.json"))
    m = phantom_case(seed=3, n_slices=1, shape=(64, 64)).mask[0]
    frame = r.frame_for(m)
    with LiveEngine(r) as eng:
        assert not eng.busy
        eng.submit(m, frame)
        assert eng.busy
        assert eng.wait_idle(30) and not eng.busy


def test_resume_continues_a_flow_run(tiny_flow, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_flow.out, out)
    with pytest.raises(CmrError, match="--objective 'flow', not 'diffusion'|trains a flow model"):
        DiffusionTrainer(DiffusionOptions(objective="diffusion", out=str(out), name="tiny-flow", steps=70, resume=True, **TINY))
    tr = DiffusionTrainer(DiffusionOptions(objective="flow", out=str(out), name="tiny-flow", steps=64, resume=True, **TINY))
    assert tr.step == 60
    assert all(torch.equal(v, tiny_flow.ema.state_dict()[k]) for k, v in tr.ema.state_dict().items())
    tr.run(progress=False)
    assert json.loads((out / "tiny-flow.json").read_text(encoding="utf-8"))["training"]["iterations"] == 64


def test_cli_render_with_diffusion_and_flow_models_keeps_the_masks_geometry(tiny_diffusion, tiny_flow, tmp_path):
    case = phantom_case(seed=6, n_slices=2, shape=(80, 96))
    affine = np.array([[0, 0, 1.3, 5], [0, -1.4, 0, 3], [8.0, 0, 0, -7], [0, 0, 0, 1]])
    mask = tmp_path / "heart_mask.nii.gz"
    write_volume(mask, case.mask, affine)
    outs = {}
    for tr, extra in ((tiny_diffusion, ["--steps", "3", "--guidance", "2"]), (tiny_flow, ["--steps", "2", "--solver", "heun", "--shifts", "4"])):
        out = tmp_path / f"{tr.opts.objective}.nii.gz"
        p = run("render", str(mask), "--model", _card(tr), "--vendor", "ge", "--seed", "3", "--out", str(out), *extra)
        assert f"({tr.opts.objective}, " in p.stdout and "2 slices of 80×96" in p.stdout
        assert ("2 steps (heun, averaged over 4 shifts)" in p.stdout) == (tr is tiny_flow), p.stdout
        res = nib.load(out)
        assert res.shape == (96, 80, 2) and np.allclose(res.affine, nib.load(mask).affine)
        outs[tr.opts.objective] = np.asarray(res.dataobj)
        assert outs[tr.opts.objective].std() > 0.01
    assert not np.allclose(outs["diffusion"], outs["flow"])
    # bad options: one sentence each, nothing written
    never = tmp_path / "never.nii.gz"
    p = cli("render", str(mask), "--model", _card(tiny_flow), "--solver", "ddim", "--out", str(never), check=False)
    assert p.returncode == 2 and "--solver 'ddim' does not fit the flow model" in p.stderr and "Traceback" not in p.stderr
    p = cli("render", str(mask), "--model", _card(tiny_diffusion), "--steps", "0", "--out", str(never), check=False)
    assert p.returncode == 2 and "--steps 0 must be between 1" in p.stderr
    p = cli("render", str(mask), "--model", _card(tiny_flow), "--shifts", "2", "--out", str(never), check=False)
    assert p.returncode == 2 and "--shifts 2 must be 1 (one pass a step) or 4" in p.stderr and "Traceback" not in p.stderr
    p = cli("render", str(mask), "--steps", "5", "--out", str(never), check=False)  # the default SPADE model
    if (resources_dir() / "models" / "spade-cmr.json").exists():
        assert p.returncode == 2 and "applies to diffusion and flow models" in p.stderr
    assert not never.exists()


def test_bench_hq_prints_seconds_per_sample(tiny_flow):
    p = run("bench", "hq", "--model", _card(tiny_flow), "--steps", "1", "--steps", "3", "--n", "1", "--json")
    res = json.loads(p.stdout)
    assert [r["steps"] for r in res["rows"]] == [1, 3] and all(r["seconds"] > 0 for r in res["rows"])
    text = run("bench", "hq", "--model", _card(tiny_flow), "--steps", "2", "--n", "1").stdout
    assert "s/sample" in text and "flow" in text


# -- the shipped models ----------------------------------------------------------------------------

def _shipped(name: str):
    if not (resources_dir() / "models" / f"{name}.json").exists():
        pytest.skip(f"resources/models/{name}.json is not in this checkout")
    return get_model(name, kind=("diffusion", "flow"))


@pytest.mark.parametrize("name", ["flow-cmr", "flow-cmr-2step", "flow-cmr-fine", "flow-cmr-fine-2step"])
def test_shipped_hq_model_states_its_data(name):
    info = _shipped(name)
    verify(info)
    card = info.card
    assert info.name == name and info.origin == "shipped" and info.size_mb < 40
    assert {"acdc", "mnms"} <= {d["dataset"] for d in card["training"]["data"]}
    assert "non-commercial" in card["terms"] and card["training"]["iterations"] >= {"flow-cmr": 4000, "flow-cmr-2step": 900, "flow-cmr-fine": 4500,
                                                                                      "flow-cmr-fine-2step": 1200}[name]
    assert "H1N8S6" in card["training"]["held_out_case_prefixes"]


def test_the_fine_hq_model_is_flow_cmr_trained_on_for_the_fine_prior_and_renders_with_it():
    """flow-cmr-fine: flow-cmr trained on each slice's own 2.5 mm tissue classes, none near the heart, as spade-cmr is; its
    card names the shipped flow-cmr by sha256 and the fine prior, and its fully synthetic renders take their classes from
    layout-cmr-fine (whose cells are its own) with none on the heart, while flow-cmr keeps layout-cmr's 10 mm cells."""
    from cmrstudio.engine.scene import SliceContext

    fine, coarse = _shipped("flow-cmr-fine"), _shipped("flow-cmr")
    cond, pre = fine.card["conditioning"], fine.card["training"]["pretraining"]
    assert pre["name"] == "flow-cmr" and pre["sha256"] == coarse.card["sha256"] == sha256_file(coarse.weights_path)
    assert cond["layout_prior"]["name"] == "layout-cmr-fine" and cond["layout_factor"] == 2
    assert cond["layout_hidden_near_heart_mm"] == 3.75 and coarse.card["conditioning"]["layout_factor"] == 8
    assert fine.card["training"]["held_out_case_prefixes"] == coarse.card["training"]["held_out_case_prefixes"]
    r = open_renderer(fine, steps=2)
    assert r.layout_prior_name() == "layout-cmr-fine" and open_renderer(coarse).layout_prior_name() == "layout-cmr"
    seen = []
    steps = r._window_steps

    def spy(cond_t, *a, **kw):
        seen.append(cond_t[0].numpy().copy())
        return steps(cond_t, *a, **kw)

    r._window_steps = spy
    case = phantom_case(seed=2, n_slices=1, shape=(128, 128))
    frame = r.frame_for(case.mask)
    img, _ = r.render_slice_ctx(case.mask[0], frame, "siemens", 3, SliceContext("synthetic"))
    assert img.shape == case.mask[0].shape and np.isfinite(img).all() and img.std() > 0.05
    c = seen[-1]
    heart, classes = c[:3].sum(0) > 0.5, c[3:8].sum(0)
    assert heart.any() and (classes[heart] == 0).all() and (classes > 0.5).mean() > 0.3  # classes around the heart, none on it


def test_an_hq_render_after_the_live_one_takes_the_tissue_classes_the_live_model_sampled():
    """The live model (spade-cmr) and flow-cmr-fine share the fine prior: once the live model has drawn a mask fully
    synthetic, an HQ render of the same mask and seed takes that sample instead of drawing it again, and renders exactly
    what it renders when it draws it itself; another seed or another mask draws anew. `bench hq` times both."""
    from cmrstudio.engine.scene import SliceContext, layout_prior

    live, hq = open_renderer(get_model("spade-cmr", kind="spade")), open_renderer(_shipped("flow-cmr-fine"), steps=1)
    prior = hq._prior()
    assert prior is live._prior() and prior is layout_prior("layout-cmr-fine")
    case = phantom_case(seed=5, n_slices=2, shape=(128, 128))
    frame = live.frame_for(case.mask)
    before = prior.sampled
    live.render_slice_ctx(case.mask[0], frame, "siemens", 21, SliceContext("synthetic"))
    assert prior.sampled == before + 1
    kept, _ = hq.render_slice_ctx(case.mask[0], frame, "siemens", 21, SliceContext("synthetic"))
    assert prior.sampled == before + 1  # taken from the live render's sample
    prior._kept.clear()
    drawn, _ = hq.render_slice_ctx(case.mask[0], frame, "siemens", 21, SliceContext("synthetic"))
    assert prior.sampled == before + 2 and np.array_equal(kept, drawn)
    hq.render_slice_ctx(case.mask[0], frame, "siemens", 22, SliceContext("synthetic"))
    hq.render_slice_ctx(case.mask[1], frame, "siemens", 22, SliceContext("synthetic"))
    assert prior.sampled == before + 4
    from cmrstudio.engine.bench import bench_hq

    rows = {r["model"]: r for r in bench_hq(["flow-cmr-fine"], steps=[1], n=1)["rows"]}
    assert set(rows) == {f"flow-cmr-fine {m}" for m in ("in-patient", "synthetic", "synthetic, classes kept")}
    assert all(r["seconds"] > 0 and r["steps"] == 1 for r in rows.values())


def _lands_where_its_teacher_does(student, teacher, teacher_steps: int, slower_steps: int) -> dict:
    """Mean squared error, on 3 slices of a held-out M&Ms mask with 3 seeds, of the student's renders (its own sampling,
    without a spectrum gain its card may add after it: the network is what was distilled) and of the teacher's in
    ``slower_steps``, each against the teacher's own renders in ``teacher_steps`` from the same noise; for a student
    whose shifts hold a scene's tissue classes still, also as it renders so ("held")."""
    from cmrstudio.data.frame import to_frame
    from cmrstudio.io import read_mask

    c = read_mask(shared("mnms") / "H1N8S6_sa_ED_gt.nii.gz")  # held out from both
    fast, held = open_renderer(student, spectrum_gain=False), open_renderer(student, spectrum_gain=False)
    fast.still = None  # as distilled: the tissue classes moved with the image over the shifts
    m = to_frame(c, fast.frame_for(c.mask, c.spacing)).mask
    zs = [z for z in range(len(m)) if {1, 2, 3} <= set(np.unique(m[z]))][:3]
    seeds = [11, 12, 13]
    target = open_renderer(teacher, steps=teacher_steps).render_framed(m[zs], "siemens", seed=seeds)
    runs = (("student", fast), ("teacher", open_renderer(teacher, steps=slower_steps)))
    if held.still is not None:  # as the studio renders it, the tissue classes held midway between the offsets
        runs += (("held", held),)
    return {name: float(np.mean((r.render_framed(m[zs], "siemens", seed=seeds) - target) ** 2)) for name, r in runs}


def test_the_default_hq_model_is_flow_cmr_fine_distilled_to_two_steps_and_lands_where_its_teacher_does():
    """The HQ default (``--model flow``, the studio's and the server's) is flow-cmr-fine distilled by reflow: its card names
    the shipped flow-cmr-fine by sha256 and says its 2 steps are each averaged over the patch grid's 4 offsets; so
    rendered, it lands nearer flow-cmr-fine's own 8 steps from the same noise than flow-cmr-fine does in 4."""
    from cmrstudio.models.registry import hq_model_name  # what the studio's HQ box and settings start on

    student, teacher = _shipped("flow-cmr-fine-2step"), _shipped("flow-cmr-fine")
    assert get_model("flow", kind=("diffusion", "flow")).name == student.name == get_model(None, kind="flow").name
    assert hq_model_name(None) == hq_model_name("flow") == student.name and hq_model_name("flow-cmr-fine") == teacher.name
    assert hq_model_name("no-such-model") is None
    d = student.card["training"]["distillation"]
    assert d["teacher"] == teacher.name and d["teacher_sha256"] == sha256_file(teacher.weights_path) == teacher.card["sha256"]
    assert d["teacher_steps"] == teacher.card["sampling"]["steps"] == 8
    assert student.card["sampling"]["steps"] == 2 and student.card["sampling"]["shifts"] == 4
    assert student.card["conditioning"]["layout_prior"] == teacher.card["conditioning"]["layout_prior"]
    assert student.card["training"]["held_out_case_prefixes"] == teacher.card["training"]["held_out_case_prefixes"]
    r = open_renderer(student)
    assert (r.steps, r.shifts) == (2, 4) and r.layout_prior_name() == "layout-cmr-fine"
    err = _lands_where_its_teacher_does(student, teacher, 8, 4)
    assert err["student"] < 0.7 * err["teacher"], err
    # held without a bias, the shifts cost the student little (0.00023; held at offsets 0 and -1 it was 0.0008)
    assert err["held"] < err["teacher"], err


def test_flow_cmr_distilled_to_two_steps_lands_where_its_teacher_does():
    """flow-cmr-2step (the HQ default until 2026-12-07): flow-cmr distilled by reflow; its card names the shipped flow-cmr
    by sha256, and in its own 2 steps it renders held-out masks closer to what flow-cmr renders in 16 steps from the same
    noise than flow-cmr does in its own default 8 (mean squared error 0.0009 against 0.0028; flow-cmr in 2 steps: 0.0123)."""
    student, teacher = _shipped("flow-cmr-2step"), _shipped("flow-cmr")
    d = student.card["training"]["distillation"]
    assert d["teacher"] == teacher.name and d["teacher_sha256"] == sha256_file(teacher.weights_path) == teacher.card["sha256"]
    assert student.card["sampling"]["steps"] == 2 and student.card["training"]["held_out_case_prefixes"] == \
        teacher.card["training"]["held_out_case_prefixes"]
    assert open_renderer(student).steps == 2
    err = _lands_where_its_teacher_does(student, teacher, 16, 8)
    assert err["student"] < 0.7 * err["teacher"], err


@pytest.mark.parametrize("name,steps", [("flow-cmr", 4), ("flow-cmr-2step", 2), ("flow-cmr-fine", 4), ("flow-cmr-fine-2step", 2)])
def test_shipped_hq_model_renders_a_real_mnms_mask_with_bright_blood_pools(name, steps):
    from cmrstudio.data.frame import to_frame
    from cmrstudio.io import read_mask

    info = _shipped(name)
    c = read_mask(shared("mnms") / "H1N8S6_sa_ED_gt.nii.gz")  # held out from training
    r = open_renderer(info, steps=steps)
    m = to_frame(c, r.frame_for(c.mask, c.spacing)).mask
    zs = [z for z in range(len(m)) if {1, 2, 3} <= set(np.unique(m[z]))][1:4]
    img = r.render_framed(m[zs], "siemens", seed=[0, 1, 2])  # fully synthetic, the whole scene each, cut to the heart frame
    lv = np.mean([img[i][m[z] == 1].mean() for i, z in enumerate(zs)])
    myo = np.mean([img[i][m[z] == 2].mean() for i, z in enumerate(zs)])
    rv = np.mean([img[i][m[z] == 3].mean() for i, z in enumerate(zs)])
    assert lv > myo + 0.15 and rv > myo + 0.1, (lv, myo, rv)


def test_open_renderer_picks_the_engine_by_kind(tiny_run, tiny_flow):
    assert isinstance(open_renderer(read_card(tiny_run.out / "tiny.json")), Renderer)
    hq = open_renderer(read_card(_card(tiny_flow)), steps=3)
    assert isinstance(hq, HQRenderer) and hq.steps == 3
    with pytest.raises(CmrError, match="is a flow model, not a spade model"):
        Renderer(read_card(_card(tiny_flow)))


def test_closing_the_queue_reports_queued_jobs_and_seeds_can_be_per_slice(tiny_flow):
    r = HQRenderer(read_card(_card(tiny_flow)))
    case = phantom_case(seed=4, n_slices=2, shape=(64, 64))
    frame = r.frame_for(case.mask)
    done = []
    q = JobQueue(r, on_done=lambda j: done.append((j.id, j.status)))
    ids = [q.submit(case.mask[0], frame, steps=50) for _ in range(3)]
    q.close()
    assert {i for i, _ in done} >= set(ids[1:]) and all(s == "cancelled" for i, s in done if i != ids[0])
    with pytest.raises(CmrError, match="closed"):
        q.submit(case.mask[0], frame)
    # one seed: one noise for the batch; a seed per mask: independent samples
    framed = np.stack([r.to_frame(case.mask[1], frame)] * 2)
    same = r.render_framed(framed, "ge", seed=3)
    indep = r.render_framed(framed, "ge", seed=[3, 4])
    assert np.array_equal(same[0], same[1]) and not np.allclose(indep[0], indep[1])
    assert np.array_equal(indep[0], same[0])  # seed 3 is seed 3, alone or in a list
    with pytest.raises(CmrError, match="3 seeds were given for 2 masks"):
        r.render_framed(framed, "ge", seed=[1, 2, 3])


def test_bad_hq_options_get_one_sentence(tiny_flow, tmp_path):
    p = cli("bench", "hq", "--model", _card(tiny_flow), "--steps", "0", "--n", "1", check=False)
    assert p.returncode == 2 and "--steps 0 must be between 1" in p.stderr and "Traceback" not in p.stderr
    p = cli("bench", "hq", "--model", _card(tiny_flow), "--steps", "1", "--size", "100", "--n", "1", check=False)
    assert p.returncode == 2 and "--size 100 does not fit" in p.stderr
    for bad, msg in ((dict(guidance=30.0), "--guidance 30.0 must be between 0 and 20"), (dict(sample_steps=0), "--sample-steps 0 must be a whole number"),
                     (dict(size=72), "--size 72 must be a multiple of 16"), (dict(cond_drop=1.0), "--cond-drop 1.0"),
                     (dict(hide_heart_classes=3.0), "--hide-heart-classes hides tissue classes, which only scene presets"),
                     (dict(hide_heart_classes=float("nan")), "--hide-heart-classes nan must be a distance in mm above 0")):
        with pytest.raises(CmrError, match=msg):
            DiffusionTrainer(DiffusionOptions(objective="flow", out=str(tmp_path / "x"), steps=5, **{**TINY, "preset": "lite", **bad}))
    # no mask dropout: the unconditional branch is untrained, so the card's default guidance is 1
    tr = DiffusionTrainer(DiffusionOptions(objective="flow", out=str(tmp_path / "y"), steps=5, cond_drop=0.0, **TINY))
    assert tr.card()["sampling"]["guidance"] == 1.0


# -- fine-tuning and the grid penalty -------------------------------------------------------------

@pytest.mark.parametrize("objective", ["flow", "diffusion"])
def test_the_clean_image_a_perfect_prediction_points_to_is_the_training_image(objective):
    from cmrstudio.models.sampling import training_loss

    torch.manual_seed(4)
    x0, noise, t = torch.rand(3, 1, 16, 16) * 2 - 1, torch.randn(3, 1, 16, 16), torch.tensor([0.1, 0.5, 0.95])
    tt = t[:, None, None, None]
    a, s = torch.cos(tt * torch.pi / 2), torch.sin(tt * torch.pi / 2)
    target = noise - x0 if objective == "flow" else a * noise - s * x0
    loss, x0_pred = training_loss(lambda *_: target, objective, x0, None, None, t, noise, with_x0=True)
    assert float(loss) == 0.0 and torch.allclose(x0_pred, x0, atol=1e-5)
    _, off = training_loss(lambda *_: target + 0.1, objective, x0, None, None, t, noise, with_x0=True)
    assert not torch.allclose(off, x0, atol=1e-3)


def test_fine_tuning_a_flow_model_with_the_grid_penalty_starts_from_its_weights_and_records_both(tiny_flow, tiny_diffusion, tmp_path):
    from cmrstudio.models.checkpoint import load_state

    def opts(**kw):
        return DiffusionOptions(objective="flow", **{**TINY, "out": str(tmp_path / "ft"), "name": "tiny-flow-ft", "steps": 8, **kw})

    with pytest.raises(CmrError, match="--grid-loss -1"):
        DiffusionTrainer(opts(grid=-1.0))
    with pytest.raises(CmrError, match="is a diffusion model, not a flow model"):
        DiffusionTrainer(opts(init=_card(tiny_diffusion)))
    with pytest.raises(CmrError, match=r"does not match this run's architecture \(size 64 \(this run 128\)\)"):
        DiffusionTrainer(opts(init=_card(tiny_flow), size=128))
    p = cli("train", "flow", "--phantom", "3", "--preset", "tiny", "--size", "128", "--steps", "2", "--init", _card(tiny_flow),
            "--out", str(tmp_path / "cli"), "--quiet", check=False)
    assert p.returncode != 0 and "does not match this run's architecture" in p.stderr and "Traceback" not in p.stderr

    tr = DiffusionTrainer(opts(init=_card(tiny_flow), grid=50.0))
    theirs = load_state(str(tiny_flow.out / "tiny-flow.safetensors"))
    assert all(torch.equal(theirs[k], v) for k, v in tr.net.state_dict().items())
    assert all(torch.equal(theirs[k], v) for k, v in tr.ema.state_dict().items())
    tr.run(progress=False)
    card = read_card(tmp_path / "ft" / "tiny-flow-ft.json").card
    pre = card["training"]["pretraining"]
    assert pre["name"] == "tiny-flow" and pre["sha256"] == read_card(_card(tiny_flow)).card["sha256"] and pre["iterations"] == 60
    assert card["training"]["grid_period2"] == 50.0 and card["training"]["iterations"] == 8
    logged = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("grid" in r for r in logged) and all(r["grid"] >= 0 for r in logged if "grid" in r)
    moved = load_state(str(tmp_path / "ft" / "tiny-flow-ft.safetensors"))
    assert any(not torch.equal(theirs[k], moved[k]) for k in theirs)  # it trained on from there
    saved = tr.grid_penalty.ref.clone()
    resumed = DiffusionTrainer(opts(init=_card(tiny_flow), grid=50.0, steps=10, resume=True))
    resumed._load_state()
    assert resumed.grid_penalty.ref is not None and torch.allclose(resumed.grid_penalty.ref, saved)  # taken back
    resumed.run(progress=False)
    assert resumed.step == 10 and not torch.equal(resumed.grid_penalty.ref, saved)  # then updated by two more steps


def test_reflow_distils_a_flow_model_to_one_step_and_its_card_names_the_teacher(tiny_flow, tiny_diffusion, tmp_path, monkeypatch):
    """``train flow --init TEACHER --reflow N``: the targets are the teacher's N-step renders of each batch's own noise, and
    the student learns to land in one step where they land (nearer than the teacher's own one step, guided or not), with
    the teacher's guidance built in (the student samples unguided), the teacher kept as it was, and the card naming it."""
    import cmrstudio.train.diffusion as training
    from cmrstudio.models.checkpoint import load_state
    from cmrstudio.models.sampling import run_to_end

    def opts(**kw):
        return DiffusionOptions(objective="flow", **{**TINY, "out": str(tmp_path / "rf"), "name": "tiny-flow-1step", "steps": 40,
                                                     "sample_steps": 1, "warmup": 1, **kw})

    teacher_card = _card(tiny_flow)
    with pytest.raises(CmrError, match="--reflow needs the flow model to distil"):
        DiffusionTrainer(opts(reflow=8))
    for bad in (-2, 5000, 2.5):
        with pytest.raises(CmrError, match=f"--reflow {bad} must be a whole number"):
            DiffusionTrainer(opts(reflow=bad, init=teacher_card))
    with pytest.raises(CmrError, match="--cond-drop 0.1 does not fit --reflow"):
        DiffusionTrainer(opts(reflow=8, init=teacher_card, cond_drop=0.1))
    with pytest.raises(CmrError, match="--guidance 2.0 does not fit --reflow"):
        DiffusionTrainer(opts(reflow=8, init=teacher_card, guidance=2.0))
    with pytest.raises(CmrError, match="--sample-steps 0 must be a whole number"):
        DiffusionTrainer(opts(reflow=8, init=teacher_card, sample_steps=0))
    with pytest.raises(CmrError, match="distils a rectified-flow model"):
        DiffusionTrainer(DiffusionOptions(objective="diffusion", **{**TINY, "out": str(tmp_path / "d"), "reflow": 8, "init": _card(tiny_diffusion)}))
    p = cli("train", "flow", "--phantom", "3", "--preset", "tiny", "--size", "64", "--steps", "2", "--reflow", "8",
            "--out", str(tmp_path / "cli"), "--quiet", check=False)
    assert p.returncode != 0 and "--reflow needs the flow model to distil" in p.stderr and "Traceback" not in p.stderr
    # the command line: --cond-drop and --guidance left out are 0 and unguided for a distillation
    run("train", "flow", "--phantom", "3", "--preset", "tiny", "--size", "64", "--steps", "1", "--batch", "2", "--init", teacher_card,
        "--reflow", "2", "--sample-steps", "1", "--out", str(tmp_path / "cli"), "--name", "cli-1step", "--quiet")
    cli_card = read_card(tmp_path / "cli" / "cli-1step.json").card
    assert cli_card["training"]["cond_drop"] == 0.0 and cli_card["sampling"]["guidance"] == 1.0
    assert cli_card["training"]["distillation"]["teacher_steps"] == 2

    tr = DiffusionTrainer(opts(init=teacher_card, reflow=8))
    g = read_card(teacher_card).card["sampling"]["guidance"]
    assert g > 1 and tr.teacher.guidance == g and tr.guidance == 1.0 and tr.opts.cond_drop == 0.0
    times = tr.reflow_t(400)  # uniform, half of them at t = 1, where a one-step student samples from
    assert 140 < int((times == 1.0).sum()) < 260 and float(times.min()) >= 0 and float((times < 0.5).float().mean()) > 0.1
    f = tr._fixed
    cond, vendor = tr.cond(f), f["vendor"]
    noise = torch.randn(f["image"].shape, generator=torch.Generator().manual_seed(7))  # not a noise the student trains on
    target = tr.teacher_images(cond, vendor, noise)  # the teacher's 8 guided Euler steps, in [-1, 1]
    as_rendered = run_to_end(sample(tr.teacher.net, "flow", cond, vendor, noise, 8, g, bf16=tr.teacher.bf16))
    assert torch.allclose((target[:, 0] + 1) / 2, torch.from_numpy(as_rendered), atol=1e-6)

    def one_step_error(net, guidance: float) -> float:
        """One Euler step from the noise (unclamped: a weak teacher's one step overshoots far past [-1, 1]) against the target."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=tr.bf16):
            t1 = torch.ones(len(noise))
            v = net(noise, t1, cond, vendor).float()
            if guidance != 1.0:
                v = guidance * v + (1 - guidance) * net(noise, t1, torch.zeros_like(cond), vendor).float()
        return float(((noise - v.float()) - target).pow(2).mean())

    before = min(one_step_error(tr.teacher.net, g), one_step_error(tr.ema, 1.0))  # the teacher guided, and the student as it starts
    seen = []
    plain_loss = training.training_loss

    def watched(net, objective, x0, oh, v, t, eps, **kw):
        seen.append((x0.detach().clone(), oh.detach().clone(), v.detach().clone(), eps.detach().clone()))
        return plain_loss(net, objective, x0, oh, v, t, eps, **kw)

    monkeypatch.setattr(training, "training_loss", watched)
    tr.run(progress=False)
    monkeypatch.undo()
    x0, oh, v, eps = seen[0]  # what the first step trained towards: the teacher's render of that step's own noise
    assert torch.allclose(x0, tr.teacher_images(oh, v, eps), atol=1e-6) and not torch.allclose(x0, tr.teacher_images(oh, v, -eps))
    after = one_step_error(tr.ema, 1.0)
    assert after < 0.6 * before, (after, before)
    theirs = load_state(str(tiny_flow.out / "tiny-flow.safetensors"))
    assert all(torch.equal(theirs[k].to(w.dtype), w) for k, w in tr.teacher.net.state_dict().items())  # the teacher stayed as it was
    card = read_card(tmp_path / "rf" / "tiny-flow-1step.json").card
    d = card["training"]["distillation"]
    assert d["teacher"] == "tiny-flow" and d["teacher_sha256"] == read_card(teacher_card).card["sha256"] and d["teacher_steps"] == 8
    assert d["teacher_guidance"] == g and d["teacher_solver"] == "euler" and card["sampling"] == {**card["sampling"], "steps": 1, "guidance": 1.0}
    assert card["process"]["t_distribution"].startswith("uniform")
    assert open_renderer(str(tmp_path / "rf" / "tiny-flow-1step.json")).describe()["steps"] == 1
    with pytest.raises(CmrError, match="--reflow 8, not 4"):
        DiffusionTrainer(opts(init=teacher_card, reflow=4, resume=True, steps=42))
    # a resumed distillation must go on from the same teacher, even where --init names the same file
    moved = tmp_path / "teacher"
    shutil.copytree(tiny_flow.out, moved, ignore=shutil.ignore_patterns("samples", "train_state"))
    first = DiffusionTrainer(opts(init=str(moved / "tiny-flow.json"), reflow=8, out=str(tmp_path / "rf2"), steps=2))
    first.run(progress=False)
    DiffusionTrainer(DiffusionOptions(objective="flow", out=str(moved), name="tiny-flow", steps=1, **{**TINY, "seed": 5})).run(progress=False)
    with pytest.raises(CmrError, match="distilled a teacher with sha256"):
        DiffusionTrainer(opts(init=str(moved / "tiny-flow.json"), reflow=8, out=str(tmp_path / "rf2"), steps=4, resume=True))


def test_adversarial_distillation_learns_on_from_a_student_against_real_slices(tiny_flow, tiny_diffusion, tmp_path):
    """``train flow --init STUDENT --teacher TEACHER --reflow N --adversarial W``: a distilled student goes on learning from
    its teacher, and a discriminator learns real slices from the clean images its predictions point to (in this patient put
    into the real surroundings first): it warms up alone on the network's renders, leaving the network as it was, then its
    loss moves the network from the first step. The card
    names both models and the discriminator; the discriminator is saved and resumed with the run."""
    from cmrstudio.models.checkpoint import load_state

    teacher_card = _card(tiny_flow)

    def opts(**kw):
        return DiffusionOptions(objective="flow", **{**TINY, "sample_steps": 1, "warmup": 1, "steps": 3, **kw})

    for bad, match in ((dict(adversarial=-0.5), "--adversarial -0.5 must be 0"),
                       (dict(adversarial=0.5, d_warmup=-1), "--d-warmup -1 must be a whole number"),
                       (dict(adversarial=0.5, lr_d=0.0), "--lr-d 0.0 must be above 0"),
                       (dict(teacher=teacher_card), "--teacher .* is for distillation")):
        with pytest.raises(CmrError, match=match):
            DiffusionTrainer(opts(out=str(tmp_path / "bad"), **bad))
    p = cli("train", "flow", "--phantom", "3", "--preset", "tiny", "--size", "64", "--steps", "1", "--adversarial", "-1",
            "--out", str(tmp_path / "cli"), "--quiet", check=False)
    assert p.returncode != 0 and "--adversarial -1.0 must be 0" in p.stderr and "Traceback" not in p.stderr

    # a student to go on from: one step of plain reflow
    DiffusionTrainer(opts(init=teacher_card, reflow=4, steps=1, out=str(tmp_path / "student"), name="student")).run(progress=False)
    student_card = str(tmp_path / "student" / "student.json")
    common = dict(init=student_card, teacher=teacher_card, reflow=4, d_warmup=2)
    with pytest.raises(CmrError, match="--teacher .* is a diffusion model, not a flow model"):
        DiffusionTrainer(opts(**{**common, "teacher": _card(tiny_diffusion)}, out=str(tmp_path / "bad")))
    from cmrstudio.train.common import endless

    plain = DiffusionTrainer(opts(init=student_card, teacher=teacher_card, reflow=4, out=str(tmp_path / "plain"), name="plain"))
    plain.run(progress=False)
    # the warm-up: the discriminator learns on real slices against the network's renders; the network stays as it was
    warm = DiffusionTrainer(opts(**{**common, "d_warmup": 4}, adversarial=0.5, out=str(tmp_path / "warm"), name="warm"))
    d_before = [p.detach().clone() for p in warm.D.parameters()]
    net_before = [p.detach().clone() for p in warm.net.parameters()]
    (tmp_path / "warm").mkdir()
    warm.before_first_step(endless(warm.loader))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, warm.D.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(net_before, warm.net.parameters()))
    assert warm.d_warmup_record["batches"] == 4
    # without a warm-up the run draws the same batches and noise as the plain one: only the discriminator's loss can move it
    felt = DiffusionTrainer(opts(**{**common, "d_warmup": 0}, adversarial=0.5, out=str(tmp_path / "felt"), name="felt"))
    felt.run(progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(plain.net.parameters(), felt.net.parameters()))
    adv = DiffusionTrainer(opts(**common, adversarial=0.5, out=str(tmp_path / "adv"), name="adv"))
    adv.run(progress=False)
    logged = [json.loads(line) for line in (tmp_path / "adv" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all("d" in r for r in logged) and logged[0]["d_warmup"] == 2 and all("g_adv" in r for r in logged[1:])
    card = read_card(tmp_path / "adv" / "adv.json").card
    assert card["training"]["pretraining"]["name"] == "student"
    d = card["training"]["distillation"]
    assert d["teacher"] == "tiny-flow" and d["teacher_sha256"] == read_card(teacher_card).card["sha256"]
    assert "discriminator" in d["targets"]
    a = card["training"]["adversarial"]
    assert a["weight"] == 0.5 and a["d_warmup"] == 2 and a["warmup_record"]["batches"] == 2 and a["discriminator_parameters"] == sum(p.numel() for p in adv.D.parameters())
    saved = load_state(str(tmp_path / "adv" / "train_state" / "discriminator.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in adv.D.state_dict().items())
    resumed = DiffusionTrainer(opts(**common, adversarial=0.5, out=str(tmp_path / "adv"), name="adv", steps=5, resume=True))
    resumed._load_state()
    assert all(torch.equal(saved[k], v) for k, v in resumed.D.state_dict().items())  # the discriminator goes on, not afresh
    assert resumed.d_warmup_record == adv.d_warmup_record  # and its warm-up is on record, not done again
    with pytest.raises(CmrError, match="--adversarial 0.5, not 0.2"):
        DiffusionTrainer(opts(**common, adversarial=0.2, out=str(tmp_path / "adv"), name="adv", steps=5, resume=True))
    # a run saved before these options existed ran without a discriminator: it is not resumed with one
    # (nor with another teacher than its --init)
    path = tmp_path / "plain" / "train_state" / "state.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    state["options"].pop("adversarial")
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(CmrError, match="--adversarial 0.0, not 0.5"):
        DiffusionTrainer(opts(**common, adversarial=0.5, out=str(tmp_path / "plain"), name="plain", steps=5, resume=True))
    state["options"].pop("teacher")
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(CmrError, match="--teacher None, not"):
        DiffusionTrainer(opts(**common, out=str(tmp_path / "plain"), name="plain", steps=5, resume=True))


def test_the_discriminator_sees_renders_in_this_patient_in_their_real_surroundings(tiny_flow, tmp_path, monkeypatch):
    """In in-patient samples the model's output is kept only inside the repainted region: the discriminator must see the
    real pixels outside it (else it learns the surroundings, which the renders never show), and the prediction inside."""
    tr = DiffusionTrainer(DiffusionOptions(objective="flow", **{**TINY, "out": str(tmp_path / "a"), "adversarial": 0.5, "d_warmup": 0}))
    seen = []
    monkeypatch.setattr(tr, "scene_model", lambda: True)
    monkeypatch.setattr(tr, "D", _Recording(tr.D, seen))
    real = torch.rand(2, 1, 8, 8) * 2 - 1
    pred = torch.zeros(2, 1, 8, 8, requires_grad=True)
    cond = torch.zeros(2, 10, 8, 8)
    cond[:, -1, :4] = 1.0  # the context is valid in the top half
    out = {}
    loss = tr._adversarial(pred, real, cond, torch.zeros(2, dtype=torch.long), out)
    fake = seen[1]  # real, fake (the discriminator's step), then fake (the network's loss)
    assert torch.equal(fake[:, :, :4], real[:, :, :4]) and torch.equal(fake[:, :, 4:], pred[:, :, 4:].detach())
    loss.backward()
    assert pred.grad[:, :, :4].abs().sum() == 0 and pred.grad[:, :, 4:].abs().sum() > 0  # only the repainted part is pushed
    assert "d" in out and "g_adv" in out


class _Recording(torch.nn.Module):
    def __init__(self, d, seen):
        super().__init__()
        self.d, self.seen = d, seen

    def forward(self, image, cond, vendor):
        self.seen.append(image.detach().clone())
        return [[torch.zeros(len(image), 1, 2, 2, requires_grad=True) + image.mean(dim=(1, 2, 3), keepdim=True)]]


def test_a_diffusion_model_trains_against_a_discriminator_too(tmp_path):
    """``train diffusion --adversarial``: the warm-up renders with the diffusion sampler (its own image layout) and the
    card records the discriminator."""
    tr = DiffusionTrainer(DiffusionOptions(objective="diffusion", **{**TINY, "out": str(tmp_path / "d"), "name": "d", "steps": 1,
                                                                       "adversarial": 0.5, "d_warmup": 1}))
    tr.run(progress=False)
    assert tr.d_warmup_record["batches"] == 1
    assert read_card(tmp_path / "d" / "d.json").card["training"]["adversarial"]["weight"] == 0.5
