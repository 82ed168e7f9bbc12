"""``pneumoseg serve RUN [--host 127.0.0.1] [--port 8000] [--token T] [--browse DIR [--truth CSV]]``.

The viewer (``/``) and the JSON API over HTTP; with ``--browse`` the viewer steps through a folder.
"""

from __future__ import annotations

import socket
from typing import Annotated

import typer
from rich.markup import escape

from pneumoseg.cli._common import (
    Backend,
    Checkpoint,
    Device,
    Runs,
    Tta,
    cli_errors,
    console,
    err_console,
    parse_runs,
)
from pneumoseg.errors import ConfigError
from pneumoseg.util.limits import MAX_PIXELS

__all__ = ["TOKEN_ENV", "register", "serve"]

TOKEN_ENV = "PNEUMOSEG_TOKEN"


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading the model when ``host:port`` cannot be bound (in use, bad address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (OSError, OverflowError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot listen on {host}:{port}: {reason} (choose another --port or --host)") from None


def _warn_exposed(host: str, has_token: bool) -> None:
    """One warning line when listening beyond this machine (and a louder one without a token)."""
    from pneumoseg.service.security import is_loopback

    if is_loopback(host):
        return
    risk = ("anyone who can reach it can use the API" if not has_token
            else "the token protects the API, but travels in clear text without TLS")
    err_console.print(f"[bold yellow]warning:[/] --host {host} is not a loopback address: the service is reachable "
                      f"from other machines and {risk}; put it behind a TLS reverse proxy"
                      + ("" if has_token else f" and set --token or {TOKEN_ENV}"), highlight=False, soft_wrap=True)


@cli_errors
def serve(
    run: Runs,
    host: Annotated[str, typer.Option(
        "--host", metavar="ADDRESS",
        help="Interface to listen on (0.0.0.0: every interface; warns when not loopback).")] = "127.0.0.1",
    port: Annotated[float, typer.Option("--port", metavar="PORT", help="TCP port (1-65535).")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", metavar="MB", help="Largest upload accepted (larger: HTTP 413).")] = 50.0,
    max_pixels: Annotated[float, typer.Option(
        "--max-pixels", metavar="N",
        help="Largest image in pixels, read from its header before decoding (larger: HTTP 413).")] = MAX_PIXELS,
    result_store_mb: Annotated[float, typer.Option(
        "--result-store-mb", metavar="MB", help="Memory for recent results served by the image routes (LRU).")] = 512.0,
    cache_size: Annotated[float, typer.Option(
        "--cache-size", metavar="N", help="At most this many results kept besides.")] = 64,
    max_concurrent: Annotated[float, typer.Option(
        "--max-concurrent", metavar="N", help="Uploads decoded / post-processed at once.")] = 2,
    token: Annotated[str | None, typer.Option(
        "--token", envvar=TOKEN_ENV, show_envvar=True, metavar="TOKEN",
        help="Require 'Authorization: Bearer TOKEN' on the API (prefer the environment variable: a command line is "
             "visible to other users).")] = None,
    checkpoint: Checkpoint = "best",
    device: Device = None,
    tta: Tta = False,
    backend: Backend = "auto",
    browse: Annotated[str | None, typer.Option(
        "--browse", metavar="DIR", help="Step through the DICOM / PNG files under DIR in the viewer (predicted on "
                                        "demand; DIR/masks/<stem>.png is their ground truth).")] = None,
    truth: Annotated[str | None, typer.Option(
        "--truth", metavar="CSV", help="Ground truth of the --browse files: a train-rle.csv (by ImageId).")] = None,
    browse_max_files: Annotated[float, typer.Option(
        "--browse-max-files", metavar="N", help="List at most this many files of --browse DIR.")] = 10_000,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", metavar="NAME[:PORT]",
        help="Also accept this Host / Origin (repeatable; also $PNEUMOSEG_ALLOWED_HOSTS). Always accepted: "
             "localhost, 127.0.0.1, [::1] and --host; others get 400.")] = None,
    header_timeout_s: Annotated[float, typer.Option(
        "--header-timeout-s", metavar="SECONDS",
        help="Close a connection whose request headers are not complete within this many seconds (408; slow "
             "clients).")] = 10.0,
    body_timeout_s: Annotated[float, typer.Option(
        "--body-timeout-s", metavar="SECONDS",
        help="Close a connection whose request body is not complete this many seconds after its headers.")] = 120.0,
    keep_alive_s: Annotated[float, typer.Option(
        "--keep-alive-s", metavar="SECONDS", help="Close idle kept-alive connections after this.")] = 5.0,
    max_connections: Annotated[float, typer.Option(
        "--max-connections", metavar="N", help="Open connections at most; more are answered 503 and closed.")] = 100,
) -> None:
    """Serve the viewer (/) and the API (POST /predict, GET /health); the model is loaded once."""
    import uvicorn

    from pneumoseg.service import ServiceSettings, create_app
    from pneumoseg.service.server import uvicorn_options
    from pneumoseg.service.settings import allowed_hosts_from_env

    # Numbers are parsed as floats so that inf / nan / 1e9 reach these checks (one line, exit 2).
    if not (1 <= port <= 65535 and float(port).is_integer()):
        raise ConfigError(f"--port must be an integer in 1-65535, got {port:g}")
    port_number = int(port)
    # Every option is checked (one error line, exit 2) before the port is bound or the model loads.
    settings = ServiceSettings(max_upload_mb=max_upload_mb, max_pixels=max_pixels,  # type: ignore[arg-type]
                               result_store_mb=result_store_mb, cache_size=cache_size,  # type: ignore[arg-type]
                               max_concurrent=max_concurrent, token=token or None,  # type: ignore[arg-type]
                               checkpoint=checkpoint, device=device, tta=tta, backend=backend, browse_dir=browse,
                               truth=truth, browse_max_files=browse_max_files,  # type: ignore[arg-type]
                               bind_host=host, allowed_hosts=(*allowed_hosts_from_env(), *(allowed_host or ())),
                               header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                               keep_alive_s=keep_alive_s, max_connections=max_connections)  # type: ignore[arg-type]
    _check_port_free(host, port_number)
    _warn_exposed(host, settings.token is not None)

    runs = parse_runs(run)
    with console.status("loading the model"):
        app = create_app(runs, settings)
    described = app.state.model.describe()
    predictor = app.state.model.predictor
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    if app.state.stale_uploads_removed:
        console.print(f"removed {app.state.stale_uploads_removed} upload folder(s) left by an older pneumoseg "
                      "in the temporary directory", highlight=False)
    console.print(f"model [bold]{described['model']}[/] at {described['size']} px on {described['device']} "
                  f"(post-processing: {escape(predictor.postprocess.describe())}; {escape(predictor.postprocess_source)})",
                  highlight=False, soft_wrap=True)
    console.print(f"backend: {predictor.backend_reason}", highlight=False, soft_wrap=True)
    folder = app.state.browse
    if folder is not None:
        more = f" (first {folder.max_files} only: --browse-max-files)" if folder.truncated else ""
        console.print(f"browsing {len(folder)} image file(s) under {folder.root}{more}", highlight=False)
    console.print(f"viewer: [bold]http://{shown}:{port_number}/[/]  API schema: http://{shown}:{port_number}"
                  f"/openapi.json  (access token {'required' if settings.token else 'not required'}; "
                  "Ctrl+C to stop)", highlight=False)
    uvicorn.run(app, host=host, port=port_number, log_level="info", server_header=False, **uvicorn_options(settings))


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve)
