"""``pneumoseg serve RUN [--host 127.0.0.1] [--port 8000]``: the viewer and JSON API over HTTP."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from pneumoseg.cli._common import cli_errors, console
from pneumoseg.errors import ConfigError

__all__ = ["register", "serve"]


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading the model when ``host:port`` cannot be bound (in use, bad address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              "(choose another --port or --host)") from None


@cli_errors
def serve(
    run: str = typer.Argument(..., help="Run folder, or several as RUN,RUN2,... (ensembled by averaging)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Largest upload accepted (larger: HTTP 413)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | snapshot-K in every run."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    tta: bool = typer.Option(False, "--tta", help="Horizontal-flip test-time augmentation."),
    cache_size: int = typer.Option(64, "--cache-size", min=1, help="Results kept for the image routes (LRU)."),
) -> None:
    """Serve the viewer (/) and the API (POST /predict, GET /health); the model is loaded once."""
    import uvicorn

    from pneumoseg.service import ServiceSettings, create_app

    _check_port_free(host, port)

    settings = ServiceSettings(max_upload_mb=max_upload_mb, cache_size=cache_size, checkpoint=checkpoint,
                               device=device, tta=tta)
    runs = [Path(r) for r in run.split(",") if r]
    with console.status("loading the model"):
        app = create_app(runs, settings)
    described = app.state.model.describe()
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    console.print(f"model [bold]{described['model']}[/] at {described['size']} px on {described['device']} "
                  f"(post-processing {described['postprocess']})", highlight=False)
    console.print(f"viewer: [bold]http://{shown}:{port}/[/]  API docs: http://{shown}:{port}/docs  "
                  "(Ctrl+C to stop)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve)
