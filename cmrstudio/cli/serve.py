"""``cmrstudio serve``: the engine as a server (HTTP + WebSocket) for studios on other machines."""

from __future__ import annotations

from typing import Optional

import typer


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Anything but loopback needs a token (made at first start)."),
    port: int = typer.Option(8765, "--port"),
    token_file: Optional[str] = typer.Option(None, "--token-file", help="A file holding the token (mode 600). Default beyond loopback: "
                                             "serve-token in the user config dir, generated at first start."),
    no_token: bool = typer.Option(False, "--no-token", help="Serve without a token (refused unless bound to loopback)."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="TLS certificate (PEM); with --tls-key the server speaks https/wss."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="TLS private key (PEM)."),
    live_model: Optional[str] = typer.Option(None, "--live-model", help="Installed one-step model for live frames (default: spade-cmr)."),
    hq_model: Optional[str] = typer.Option(None, "--hq-model", help="Default installed HQ model (default: flow-cmr-fine-2step); clients may name "
                                           "another installed one."),
    layout_prior: Optional[str] = typer.Option(None, "--layout-prior", help="Installed layout model that fully synthetic renders take "
                                               "their body from (a layout bank of your site's scans; default: each model's own prior)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: the best there is)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    max_clients: int = typer.Option(32, "--max-clients", help="WebSocket clients served at once."),
    max_request_mb: float = typer.Option(8.0, "--max-request-mb", help="Largest request (HTTP body or WebSocket message), MB."),
    live_rate: float = typer.Option(240.0, "--live-rate", help="Live masks a second per client (bursts of twice that)."),
):
    """Serve live rendering (WebSocket, latest-wins), HQ jobs, the installed models and a health check to studios elsewhere."""
    from cmrstudio.serve import ServeConfig, check_config, serve_forever

    cfg = ServeConfig(host=host, port=port, live_model=live_model, hq_model=hq_model, layout_prior=layout_prior, device=device, threads=threads,
                      max_clients=max_clients, max_request_bytes=int(max_request_mb * 2**20), live_rate=live_rate,
                      tls_cert=tls_cert, tls_key=tls_key)
    cfg = check_config(cfg, token_file=token_file, no_token=no_token, say=lambda t: typer.echo(t, err=True))
    serve_forever(cfg, say=lambda t: typer.echo(t, err=True))
