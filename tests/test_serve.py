"""cmrstudio serve: a real uvicorn server on loopback, driven by real HTTP and WebSocket clients."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from cmrstudio.engine.scene import SliceContext
from cmrstudio.errors import CmrError
from cmrstudio.serve import ServeConfig, check_config, start, wire
from cmrstudio.serve.client import RemoteBackend

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server():
    srv = start(ServeConfig(port=0, threads=1, bf16=False, token=TOKEN, live_rate=1000))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sample():
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.io import sample_case

    case = sample_case("ED")
    z = int(np.argmax((case.mask > 0).sum(axis=(1, 2))))
    r = open_renderer(None, bf16=False, threads=1)
    frame = r.frame_for(case.mask, case.spacing, image=case.image)
    return case, z, r, frame


def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def healthy(server) -> bool:
    r = httpx.get(server.url + "/health", headers=auth(), timeout=10)
    return r.status_code == 200 and r.json()["status"] == "ok"


def test_live_render_matches_the_local_renderer(server, sample):
    case, z, r, frame = sample
    ctx = SliceContext("in-patient", case.image[z], case.mask[z])
    got = []
    b = RemoteBackend(server.url, TOKEN)
    with b.live(on_ready=got.append) as e:
        rid = e.submit(case.mask[z], frame, "siemens", 7, tag="a", context=ctx)
        assert e.wait_idle(60)
    res = got[-1]
    assert res.request_id == rid and res.error is None and res.tag == "a"
    assert res.where == b.where and res.rtt_ms > 0 and res.record.model == "spade-cmr" and res.record.mode == "in-patient"
    local, framed = r.render_slice(case.mask[z], frame, "siemens", 7, ctx)
    # float16 on the wire: a relative error of at most 2**-11 of the value
    assert np.allclose(res.image, local, rtol=2 ** -10, atol=1e-3)
    assert np.allclose(res.framed, framed, atol=1e-3)
    assert not np.allclose(res.image, r.render_slice(case.mask[z], frame, "siemens", 8, ctx)[0], atol=1e-2)  # the seed matters
    assert np.array_equal(res.mask, case.mask[z])


def test_latest_wins_on_the_server(server, sample):
    case, z, r, frame = sample
    masks = []
    m = case.mask[z].copy()
    for i in range(12):
        m[100 + i, 60:64] = 3
        masks.append(m.copy())
    with connect(server.url.replace("http", "ws") + "/ws/live", additional_headers=auth()) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        for i, mm in enumerate(masks, 1):  # all at once: the server renders a few and drops the stale ones
            ws.send(wire.encode({"type": "render", "id": i, "frame": frame.to_dict(), "vendor": "ge", "seed": 1}, {"mask": mm}, compress=True))
        ids, last = [], None
        while not ids or ids[-1] != len(masks):
            h, arrays = wire.decode(ws.recv(timeout=120))
            assert h["error"] is None
            ids.append(h["id"])
            last = h, arrays
    assert ids == sorted(set(ids)), "a frame for an older mask came after a newer one"
    assert len(ids) < len(masks) and last[0]["dropped"] == len(masks) - len(ids)
    local, _ = r.render_slice(masks[-1], frame, "ge", 1)
    assert np.allclose(wire.image_in(last[1]["image"], None), local, rtol=2 ** -10, atol=1e-3)  # the last one is the newest mask
    assert httpx.get(server.url + "/health", headers=auth()).json()["late_frames"] == 0


def test_every_endpoint_needs_the_token(server):
    for method, path in (("GET", "/health"), ("GET", "/models"), ("POST", "/jobs"), ("GET", "/jobs/x"), ("DELETE", "/jobs/x")):
        for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxx"}, {"Authorization": TOKEN}):
            r = httpx.request(method, server.url + path, headers=headers)
            assert r.status_code == 401 and "token" in r.json()["error"], (method, path, headers)
    with pytest.raises(CmrError, match="refused the token"):
        RemoteBackend(server.url, "wrong-token-xxxxxxxxxx").health()
    with pytest.raises(CmrError, match="refused the token"):
        RemoteBackend(server.url, "wrong-token-xxxxxxxxxx").live()
    # a WebSocket without the header: the first message must be the token
    with connect(server.url.replace("http", "ws") + "/ws/live") as ws:
        ws.send(json.dumps({"type": "auth", "token": "nope"}))
        msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] == "error" and msg["status"] == 401
    with connect(server.url.replace("http", "ws") + "/ws/live") as ws:
        ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    models = httpx.get(server.url + "/models", headers=auth()).json()["models"]
    spade = next(m for m in models if m["name"] == "spade-cmr")
    assert spade["live"] and len(spade["sha256"]) == 64 and spade["card"]["kind"] == "spade"
    h = httpx.get(server.url + "/health", headers=auth()).json()
    assert h["device"] == "cpu" and "spade-cmr" in h["models_loaded"] and h["uptime_s"] >= 0 and h["version"]


def test_a_public_bind_needs_a_token(tmp_path, monkeypatch):
    from cmrstudio.cli import main

    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "cfg" / "settings.json"))
    with pytest.raises(CmrError, match="needs a token"):
        check_config(ServeConfig(host="0.0.0.0"), no_token=True)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--host", "0.0.0.0", "--no-token"])
    assert exc.value.code == 2
    loose = tmp_path / "loose"
    loose.write_text("a-token-that-is-long-enough\n")
    loose.chmod(0o644)
    with pytest.raises(CmrError, match="chmod 600"):
        check_config(ServeConfig(host="0.0.0.0"), token_file=str(loose))
    with pytest.raises(CmrError, match="does not exist"):
        check_config(ServeConfig(host="0.0.0.0"), token_file=str(tmp_path / "missing"))
    said = []
    cfg = check_config(ServeConfig(host="0.0.0.0"), say=said.append)  # first start: a token is made, stored 600, printed once
    stored = tmp_path / "cfg" / "serve-token"
    assert cfg.token and stored.read_text(encoding="utf-8").strip() == cfg.token and (stored.stat().st_mode & 0o777) == 0o600
    assert len(said) == 1 and cfg.token in said[0]
    again = []
    assert check_config(ServeConfig(host="0.0.0.0"), say=again.append).token == cfg.token and not again
    assert check_config(ServeConfig(host="127.0.0.1")).token is None  # loopback only: no token needed


def _post_job(server, header: dict, arrays: dict, client: str = "t", **kw) -> httpx.Response:
    return httpx.post(server.url + "/jobs", content=wire.encode(header, arrays, **kw),
                      headers={**auth(), "X-Cmrstudio-Client": client}, timeout=60)


def test_bad_requests_get_one_sentence_and_the_server_stays_up(server, sample):
    case, z, r, frame = sample
    fd = frame.to_dict()
    good = {"frame": fd, "seed": 0, "steps": 1}
    bad = case.mask[z].copy()
    bad[0, 0] = 9
    cases = [
        (_post_job(server, good, {"mask": bad}), 400, "label 9"),
        (_post_job(server, good, {"mask": case.mask[z][:100]}), 400, "frame was made for"),
        (_post_job(server, {**good, "model": "/etc/passwd"}, {"mask": case.mask[z]}), 400, "not an installed"),
        (_post_job(server, {**good, "model": "../resources/models/flow-cmr.json"}, {"mask": case.mask[z]}), 400, "not an installed"),
        (_post_job(server, {**good, "model": "seg-cmr"}, {"mask": case.mask[z]}), 400, "not an installed"),
        (_post_job(server, {**good, "vendor": "acme"}, {"mask": case.mask[z]}), 400, "Vendor"),
        (_post_job(server, {**good, "frame": {"size": -1}}, {"mask": case.mask[z]}), 400, "malformed"),
        (_post_job(server, {**good, "steps": 10 ** 9}, {"mask": case.mask[z]}), 400, "steps"),
        (httpx.post(server.url + "/jobs", content=b"not an envelope", headers=auth()), 400, "envelope"),
        (httpx.post(server.url + "/jobs", content=b"CMR1\x00\x00\x00\x05{}{}{", headers=auth()), 400, "header"),
        (httpx.post(server.url + "/jobs", content=b"x" * (9 * 2**20), headers=auth()), 413, "limit"),
        (httpx.get(server.url + "/jobs/../../etc/passwd", headers=auth()), 404, ""),
        (httpx.get(server.url + "/jobs/nosuchjob", headers=auth()), 404, "no job"),
    ]
    # a zlib bomb: claims a small shape, inflates far beyond it
    bomb = wire.encode(good, {"mask": np.zeros((2048, 2048), np.uint8)}, compress=True)
    h = json.loads(bomb[8:8 + int.from_bytes(bomb[4:8], "big")])
    h["blobs"]["mask"]["shape"] = [16, 16]
    head = json.dumps(h).encode()
    bomb = b"CMR1" + len(head).to_bytes(4, "big") + head + bomb[8 + int.from_bytes(bomb[4:8], "big"):]
    cases.append((httpx.post(server.url + "/jobs", content=bomb, headers=auth()), 400, "decompresses"))
    for resp, status, words in cases:
        assert resp.status_code == status, (resp.status_code, resp.text)
        body = resp.json()
        assert set(body) == {"error"} and words in body["error"] and "Traceback" not in body["error"], body
        assert "\n" not in body["error"]
    # over the live WebSocket: an error reply for the bad request, then the next one renders
    with connect(server.url.replace("http", "ws") + "/ws/live", additional_headers=auth()) as ws:
        ws.recv(timeout=10)
        ws.send("{not json")
        assert "neither" in json.loads(ws.recv(timeout=10))["error"]
        ws.send(wire.encode({"type": "render", "id": 1, "frame": fd}, {"mask": bad}))
        h, _ = wire.decode(ws.recv(timeout=10))
        assert h["id"] == 1 and "label 9" in h["error"]
        ws.send(wire.encode({"type": "render", "id": 2, "frame": fd, "context": {"mode": "in-patient", "image": "nope"}},
                            {"mask": case.mask[z]}))
        assert "was not sent" in wire.decode(ws.recv(timeout=10))[0]["error"]
        ws.send(wire.encode({"type": "render", "id": 3, "frame": fd}, {"mask": case.mask[z]}))
        h, arrays = wire.decode(ws.recv(timeout=60))
        assert h["id"] == 3 and h["error"] is None and arrays["image"].shape == case.mask[z].shape
    assert healthy(server)


def test_hq_jobs_over_http_queue_fairly(server, sample):
    case, z, r, frame = sample
    hdr = {"frame": frame.to_dict(), "seed": 0, "steps": 1, "context": {"mode": "synthetic"}}
    ids = {}
    for name, client in (("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B")):
        resp = _post_job(server, hdr, {"mask": case.mask[z]}, client=client)
        assert resp.status_code == 200, resp.text
        ids[name] = resp.json()["job"]
    finished = {}
    end = time.monotonic() + 180
    while len(finished) < 4 and time.monotonic() < end:
        for name, jid in ids.items():
            if name not in finished:
                s = httpx.get(f"{server.url}/jobs/{jid}", headers=auth()).json()
                if s["status"] in ("done", "failed", "cancelled"):
                    finished[name] = (time.monotonic(), s["status"])
        time.sleep(0.05)
    assert all(s == "done" for _, s in finished.values()), finished
    # round-robin: B's one job does not wait for all of A's
    assert finished["b1"][0] < finished["a3"][0]
    res = httpx.get(f"{server.url}/jobs/{ids['b1']}/result", headers=auth())
    h, arrays = wire.decode(res.content)
    assert h["record"]["kind"] == "flow" and h["record"]["steps"] == 1 and arrays["image"].shape == case.mask[z].shape


def test_a_client_that_disconnects_mid_job_has_its_job_cancelled(server, sample):
    case, z, r, frame = sample
    ws = connect(server.url.replace("http", "ws") + "/ws/jobs", additional_headers=auth()).__enter__()
    ws.recv(timeout=10)
    ws.send(wire.encode({"type": "submit", "ref": 1, "frame": frame.to_dict(), "steps": 32, "seed": 0,
                         "context": {"mode": "synthetic"}}, {"mask": case.mask[z]}, compress=True))
    queued = json.loads(ws.recv(timeout=60))
    assert queued["type"] == "queued"
    while True:  # the first step's progress, with a preview
        h, arrays = wire.decode(ws.recv(timeout=120))
        if h["type"] == "progress":
            assert arrays["preview"].ndim == 2
            break
    ws.close()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        s = httpx.get(f"{server.url}/jobs/{queued['job']}", headers=auth()).json()
        if s["status"] != "running":
            break
        time.sleep(0.1)
    assert s["status"] == "cancelled" and s["step"] < 32
    assert healthy(server)


def test_remote_job_queue_progress_cancel_and_result(server, sample):
    case, z, r, frame = sample
    b = RemoteBackend(server.url, TOKEN)
    steps, done = [], []
    q = b.jobs(on_progress=lambda j: steps.append(j.step), on_done=done.append)
    try:
        jid = q.submit(case.mask[z], frame, "philips", 3, steps=2, tag=("t", z), context=SliceContext("in-patient", case.image[z]))
        job = q.wait(jid, 120)
        assert job.status == "done" and steps[-1] == 2 and done == [job] and job.tag == ("t", z)
        assert job.result.record.mode == "in-patient" and job.result.image.shape == case.image[z].shape
        long = q.submit(case.mask[z], frame, "philips", 3, steps=64, context=SliceContext("synthetic"))
        while q.job(long).step < 1:
            time.sleep(0.02)
        q.cancel(long)
        assert q.wait(long, 60).status == "cancelled"
        with pytest.raises(CmrError, match="not an installed"):
            b.jobs(model="/tmp/evil.json").submit(case.mask[z], frame)
    finally:
        q.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_killed_mid_job_is_reported_in_one_sentence(tmp_path, sample):
    import signal
    import subprocess
    import sys

    case, z, r, frame = sample
    port = _free_port()
    env = {**os.environ, "CMRSTUDIO_CONFIG": str(tmp_path / "settings.json")}
    proc = subprocess.Popen([sys.executable, "-m", "cmrstudio.cli", "serve", "--port", str(port), "--threads", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        b = RemoteBackend(f"http://127.0.0.1:{port}")
        end = time.monotonic() + 120
        while True:
            try:
                b.health(timeout=1)
                break
            except CmrError:
                assert proc.poll() is None and time.monotonic() < end, proc.stderr.read().decode()
                time.sleep(0.2)
        lost, done = [], []
        q = b.jobs(on_done=done.append, on_lost=lost.append)
        live_lost = []
        e = b.live(on_lost=live_lost.append)
        jid = q.submit(case.mask[z], frame, steps=64, context=SliceContext("synthetic"))
        while q.job(jid).step < 1:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        job = q.wait(jid, 30)
        assert job.status == "failed" and "went away" in job.error and "\n" not in job.error
        assert len(lost) == 1 and lost[0].count(". ") == 0 and lost[0].endswith(".")
        end = time.monotonic() + 10
        while not live_lost and time.monotonic() < end:  # the live socket finds out too, and says so once
            time.sleep(0.05)
        assert len(live_lost) == 1 and "went away" in live_lost[0] and not e.busy
        with pytest.raises(CmrError, match="went away"):
            e.submit(case.mask[z], frame)
        with pytest.raises(CmrError, match="cannot be reached"):
            b.health(timeout=2)
    finally:
        proc.kill()
        proc.wait()


def test_session_renders_on_the_server_falls_back_and_reconnects(tmp_path, monkeypatch):
    from cmrstudio.session import StudioSession
    from cmrstudio.settings import Settings

    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "settings.json"))
    monkeypatch.setenv("CMRSTUDIO_LIVE_THREADS", "1")
    srv = start(ServeConfig(port=0, threads=1, bf16=False, token=TOKEN))
    port = srv.port
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    s = StudioSession(Settings(backend=srv.url, backend_token_file=str(token_file)))
    s.remember = False
    s.probe_interval_s = 0.3
    try:
        assert s.wait_backend(30), s.messages
        s.open_path(None)
        assert s.wait_live(60)
        res = s.live_shown[s.z]
        assert res.where == srv.remote.where if hasattr(srv, "remote") else res.where == f"127.0.0.1:{port}"
        assert res.rtt_ms is not None and f"on 127.0.0.1:{port}" in s.render_line()
        jid = s.render_hq("flow", steps=1)  # HQ goes to the server too
        assert jid is not None and s.wait_hq(120), s.messages
        assert s.hq_results[s.z].record.kind == "flow" and s.hq_job.status == "done"
        s.mask[s.z][120:124, 120:124] = 3  # paint, then the server stops
        s.painted()
        painted = s.mask.copy()
        srv.stop()
        end = time.monotonic() + 20
        while s.backend_state != "lost" and time.monotonic() < end:
            time.sleep(0.05)
        assert s.backend_state == "lost" and s.engine is s.local_engine
        warning = [t for lvl, t in s.messages if lvl == "warning" and "went away" in t]
        assert len(warning) == 1 and "rendering on this machine" in warning[0] and "\n" not in warning[0]
        s.request_live()
        assert s.wait_live(60)
        res = s.live_shown[s.z]
        assert res.where is None and np.array_equal(res.mask, painted[s.z]) and np.array_equal(s.mask, painted)
        assert "is not answering" in s.render_line()
        srv = start(ServeConfig(port=port, threads=1, bf16=False, token=TOKEN))  # back: the probe reconnects
        assert s.wait_backend(30) and s.backend_state == "remote"
        assert s.wait_live(60) and s.live_shown[s.z].where == f"127.0.0.1:{port}"
        assert any("is back" in t for _, t in s.messages)
    finally:
        s.close()
        srv.stop()


def test_bench_serve_reports_round_trips_with_no_late_frame():
    from cmrstudio.serve.bench import bench_serve

    res = bench_serve(clients=(1, 3), n=3, burst=4, threads=1, dab_interval_ms=1)
    assert res["local"]["p50_ms"] > 0 and res["late_frames_server"] == 0
    for row in res["rows"]:
        assert row["errors"] == 0 and row["late"] == 0 and row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
        assert row["burst_rendered"] + row["dropped"] == row["burst_sent"]  # every dab was rendered or dropped, none lost
        assert 0 <= row["transport_p50_ms"] < row["p50_ms"]


def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cp, kp = tmp_path / "cert.pem", tmp_path / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cp), str(kp)


def test_tls_serves_https_and_wss(tmp_path, sample):
    case, z, r, frame = sample
    cert, key = _self_signed(tmp_path)
    with pytest.raises(CmrError, match="both --tls-cert and --tls-key"):
        check_config(ServeConfig(tls_cert=cert))
    srv = start(ServeConfig(port=0, threads=1, bf16=False, token=TOKEN, tls_cert=cert, tls_key=key))
    try:
        assert srv.url.startswith("https://")
        with pytest.raises(CmrError, match="cannot be reached"):  # a certificate nobody vouched for is refused
            RemoteBackend(srv.url, TOKEN).health()
        b = RemoteBackend(srv.url, TOKEN, verify=cert)
        assert b.health()["tls"] is True
        got = []
        with b.live(on_ready=got.append) as e:
            e.submit(case.mask[z], frame, "siemens", 1)
            assert e.wait_idle(60)
        assert got[-1].error is None and got[-1].image.shape == case.mask[z].shape
    finally:
        srv.stop()


def test_a_server_started_with_a_layout_bank_gives_fully_synthetic_renders_that_body(tmp_path, monkeypatch, sample):
    """`cmrstudio serve --layout-prior BANK`: a site's own body layouts for every client's fully synthetic renders, as the
    studio's Settings ▸ Body layout does locally; the record over the wire names it; the HQ default (the fine prior's cells)
    takes it too, while an HQ model of other cells keeps its own prior with a warning; a layout the live model cannot take,
    or one not installed, stops the start in one sentence."""
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.resources import sample_dir
    from cmrstudio.serve.state import ServerState
    from helpers import copy_model, run

    run("train", "layout-bank", "--data", str(sample_dir()), "--out", str(tmp_path / "bank"), "--name", "bank-s")
    copy_model(tmp_path / "bank" / "bank-s.json", tmp_path / "models")
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(tmp_path / "models"))
    with pytest.raises(CmrError, match=r"Model '/tmp/elsewhere.json' is not an installed layout model here; use one of .*bank-s"):
        ServerState(ServeConfig(port=0, threads=1, layout_prior="/tmp/elsewhere.json"))  # never a path
    with pytest.raises(CmrError, match="cells"):
        ServerState(ServeConfig(port=0, threads=1, layout_prior="layout-cmr"))  # the PCA's 10 mm cells: not spade-cmr's
    case, z, r, frame = sample
    srv = start(ServeConfig(port=0, threads=1, bf16=False, token=TOKEN, layout_prior="bank-s"))
    try:
        assert httpx.get(srv.url + "/health", headers=auth(), timeout=10).json()["layout_prior"] == "bank-s"
        got = []
        b = RemoteBackend(srv.url, TOKEN)
        ctx = SliceContext("synthetic", key=("served", z))
        with b.live(on_ready=got.append) as e:
            e.submit(case.mask[z], frame, "siemens", 5, tag="s", context=ctx)
            assert e.wait_idle(60)
        res = got[-1]
        assert res.error is None and res.record.mode == "synthetic" and res.record.layout_prior == "bank-s"
        banked = open_renderer(None, bf16=False, threads=1, layout_prior="bank-s")
        local = banked.render_slice(case.mask[z], frame, "siemens", 5, SliceContext("synthetic", key=("local", z)))[0]
        own = r.render_slice(case.mask[z], frame, "siemens", 5, SliceContext("synthetic", key=("own", z)))[0]
        assert np.allclose(res.image, local, rtol=2 ** -10, atol=1e-3)  # the bank's body, rendered as locally
        assert np.abs(res.image - own).mean() > 0.02  # not the model's own prior's
        assert srv.state.hq_renderer(None).layout_prior_name() == "bank-s"  # the HQ default has the fine prior's cells too
        with pytest.warns(UserWarning, match="keeps its own body layout"):
            hq = srv.state.hq_renderer("flow-cmr-2step")  # layout-cmr's 10 mm cells
        assert hq.layout_prior_name() == "layout-cmr"
    finally:
        srv.stop()
