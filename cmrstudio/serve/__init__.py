"""``cmrstudio serve``: the engine as a server, and the client the studio uses.

* :mod:`.state`: the loaded models, live clients and the fair HQ queue (no web code);
* :mod:`.app`: the FastAPI app (HTTP + WebSocket), errors as one-sentence JSON;
* :mod:`.wire`: the binary envelope masks and images travel in;
* :mod:`.security`: tokens (mode 600), loopback checks, rate limits;
* :mod:`.client`: :class:`~.client.RemoteBackend`, :class:`~.client.RemoteLiveEngine` (the
  :class:`~cmrstudio.engine.live.LiveEngine` interface over a WebSocket) and :class:`~.client.RemoteJobQueue`.

:func:`check_config` applies the secure defaults; :func:`start` runs a server on a thread (tests,
benchmarks); :func:`serve_forever` is what the command runs.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

from cmrstudio.errors import CmrError
from cmrstudio.serve.state import ServeConfig, ServerState

__all__ = ["ServeConfig", "ServerState", "check_config", "start", "serve_forever", "Running"]


def check_config(cfg: ServeConfig, token_file: str | None = None, no_token: bool = False,
                 say=lambda text: None) -> ServeConfig:
    """The config with its token settled, or a one-sentence refusal.

    Loopback without --token-file: no token needed (only this machine can connect), unless one is given.
    Any other bind needs a token: --token-file's, or the one in the user config dir (made at first start,
    mode 600, printed once); --no-token there is refused. TLS needs both files.
    """
    from cmrstudio.serve.security import default_token_path, is_loopback, make_token, read_token

    if not 0 < int(cfg.port) < 65536:
        raise CmrError(f"--port {cfg.port} must be 1-65535.")
    if cfg.max_clients < 1:
        raise CmrError(f"--max-clients {cfg.max_clients} must be at least 1.")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise CmrError("TLS needs both --tls-cert and --tls-key (PEM files).")
    for opt, p in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key)):
        if p and not Path(p).expanduser().is_file():
            raise CmrError(f"{opt} {p} is not a file; give the PEM certificate and its private key.")
    loop = is_loopback(cfg.host)
    if no_token:
        if not loop:
            raise CmrError(f"Binding to {cfg.host} (reachable from other machines) needs a token; leave --no-token out "
                           "(one is generated) or bind to 127.0.0.1.")
        return replace(cfg, token=None)
    if token_file:
        return replace(cfg, token=read_token(token_file))
    if cfg.token is not None:
        return cfg
    if loop:
        return replace(cfg, token=None)
    p = default_token_path()
    if p.exists():
        return replace(cfg, token=read_token(p))
    token = make_token(p)
    say(f"A token for this server was generated and stored in {p} (mode 600); clients need it:\n  {token}\n"
        "It is printed only this once.")
    return replace(cfg, token=token)


def _uvicorn_config(app, cfg: ServeConfig, fd: int | None = None):
    import uvicorn

    return uvicorn.Config(app, host=cfg.host, port=cfg.port, fd=fd, log_level="warning", lifespan="off",
                          ws_max_size=cfg.max_request_bytes, ws_ping_interval=20.0, ws_ping_timeout=20.0,
                          ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key, access_log=False,
                          limit_concurrency=max(64, 4 * cfg.max_clients), timeout_keep_alive=30)


class Running:
    """A server on a thread (tests and benchmarks): ``url``, ``state``, ``stop()``."""

    def __init__(self, cfg: ServeConfig, state: ServerState | None = None):
        import uvicorn

        from cmrstudio.serve.app import create_app

        self.state = state or ServerState(cfg)
        self.cfg = cfg
        sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            sock.close()
            raise CmrError(f"Cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); pick another --port.") from None
        self.port = sock.getsockname()[1]
        self.sock = sock
        self.server = uvicorn.Server(_uvicorn_config(create_app(self.state), replace(cfg, port=self.port)))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="cmrstudio-serve", daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise CmrError(f"The server on {cfg.host}:{self.port} did not start.")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"{'https' if self.cfg.tls_cert else 'http'}://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout)
        self.state.close()
        try:
            self.sock.close()
        except OSError:
            pass


def start(cfg: ServeConfig | None = None, **kw) -> Running:
    """A server on a thread on a free loopback port unless ``cfg.port`` says otherwise (port 0: any free one)."""
    cfg = cfg or ServeConfig(port=0)
    return Running(replace(cfg, **kw) if kw else cfg)


def serve_forever(cfg: ServeConfig, say=print) -> None:
    """Load the models, listen, and serve until Ctrl-C."""
    import uvicorn

    from cmrstudio.serve.app import create_app

    state = ServerState(cfg)
    scheme = "https" if cfg.tls_cert else "http"
    bodies = f", fully synthetic bodies from {cfg.layout_prior}" if cfg.layout_prior else ""
    say(f"cmrstudio serve: live {state.live.name} on {state.device}, HQ {state.hq_default or '(none installed)'}{bodies}; "
        f"listening on {scheme}://{cfg.host}:{cfg.port} ({'token required' if cfg.token else 'no token: this machine only'}).")
    try:
        uvicorn.Server(_uvicorn_config(create_app(state), cfg)).run()
    finally:
        state.close()
