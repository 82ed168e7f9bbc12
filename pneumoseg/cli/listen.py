"""``pneumoseg listen RUN --forward AE@HOST:PORT`` (a DICOM node) and ``pneumoseg dicomweb RUN --url URL --study UID``.

``listen`` accepts C-STORE of CR / DX radiographs (and C-ECHO), queues each on disk before
acknowledging, predicts, and C-STOREs a SEG (+ SR / SC overlay with ``--sr`` / ``--sc``) into the
source's study at the destination; ``QUEUE/status.json`` is its health, one log line per instance
goes to stderr. Stop it with Ctrl-C / SIGTERM; a killed node resumes its queue on restart.
``dicomweb`` does the same for one study (or series) on a DICOMweb server: WADO-RS in, STOW-RS out.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import (
    BatchSize,
    Checkpoint,
    Device,
    Runs,
    Tta,
    cli_errors,
    console,
    err_console,
    fail,
    load_predictor,
    print_failures,
)
from pneumoseg.util.limits import MAX_INSTANCE_MB, MAX_PIXELS

__all__ = ["dicomweb", "listen", "register"]


@cli_errors
def listen(
    run: Runs,
    forward: Annotated[str, typer.Option(
        "--forward", metavar="AE@HOST:PORT", help="Where results go: AE@HOST:PORT (e.g. PACS@10.0.0.5:104).")],
    ae_title: Annotated[str, typer.Option(
        "--ae-title", metavar="AE", help="This node's AE title (callers must use it).")] = "PNEUMOSEG",
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, metavar="PORT", help="DICOM port to listen on (0: any free one).")] = 11112,
    host: Annotated[str, typer.Option(
        "--host", metavar="ADDRESS", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    queue: Annotated[Path, typer.Option(
        "--queue", metavar="DIR", help="Queue folder (resumed on restart).")] = Path("pneumoseg-queue"),
    max_pending: Annotated[int, typer.Option(
        "--max-pending", min=1, metavar="N",
        help="Instances waiting before C-STORE is answered Out of Resources.")] = 64,
    sr: Annotated[bool, typer.Option("--sr", help="Also send a DICOM SR (TID 1500: presence, score, area).")] = False,
    sc: Annotated[bool, typer.Option("--sc", help="Also send a Secondary Capture of the overlay.")] = False,
    seg_empty: Annotated[bool, typer.Option(
        "--seg-empty/--no-seg-empty", help="Send a SEG for empty predictions too.")] = True,
    calling_ae: Annotated[str | None, typer.Option(
        "--calling-ae", metavar="AE[,AE2]",
        help="Accept associations only from these calling AE titles (A,B,...). Without it ANY caller that can "
             "reach the port may store images; required with a non-loopback --host ('*' accepts any caller).")] = None,
    max_instance_mb: Annotated[float, typer.Option(
        "--max-instance-mb", min=1.0, metavar="MB",
        help="Largest instance accepted (MB); a larger one aborts its association.")] = MAX_INSTANCE_MB,
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", min=1, max=MAX_PIXELS, metavar="N",
        help="Largest image (Rows x Columns x frames) accepted; larger ones are refused before they are stored "
             "(at most the default, the reader's own limit).")] = MAX_PIXELS,
    keep: Annotated[bool, typer.Option("--keep", help="Keep sent instances and results in the queue folder.")] = False,
    checkpoint: Checkpoint = "best",
    tta: Tta = False,
    device: Device = None,
    batch_size: BatchSize = 4,
) -> None:
    """Run a DICOM node: receive radiographs, predict, send the SEG (+ SR / SC) to --forward."""
    from pneumoseg.pacs.listen import Destination, Listener, allowed_callers
    from pneumoseg.pacs.outputs import OutputOptions
    from pneumoseg.pacs.queue import InstanceQueue

    destination = Destination.parse(forward)
    callers = allowed_callers(calling_ae, host)
    predictor = load_predictor(run, checkpoint=checkpoint, tta=tta, device=device, batch_size=batch_size)
    options = OutputOptions(sr=sr, sc=sc, seg_empty=seg_empty)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pneumoseg.listen").setLevel(logging.INFO)  # one line per instance
    instance_queue = InstanceQueue(queue, max_pending=max_pending, keep=keep)
    try:
        node = Listener(predictor, instance_queue, destination, ae_title=ae_title, host=host, port=port,  # type: ignore[arg-type]
                        options=options, batch_size=batch_size, calling_ae_titles=callers,
                        max_pixels=max_pixels, max_instance_mb=max_instance_mb)
    except BaseException:
        instance_queue.close()
        raise
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except OSError as exc:
        instance_queue.close()
        raise fail(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    err_console.print(f"listening as {node.ae_title} on {host}:{node.port}; results ({options.describe()}) -> "
                      f"{destination}; queue {queue} (status.json)", highlight=False, soft_wrap=True)
    node.serve(stop)


@cli_errors
def dicomweb(
    run: Runs,
    url: Annotated[str, typer.Option(
        "--url", metavar="URL", help="DICOMweb root, e.g. http://orthanc:8042/dicom-web.")],
    study: Annotated[str, typer.Option("--study", metavar="UID", help="StudyInstanceUID to predict.")],
    series: Annotated[str | None, typer.Option(
        "--series", metavar="UID", help="Only this SeriesInstanceUID of the study.")] = None,
    sr: Annotated[bool, typer.Option("--sr", help="Also store a DICOM SR (TID 1500: presence, score, area).")] = False,
    sc: Annotated[bool, typer.Option("--sc", help="Also store a Secondary Capture of the overlay.")] = False,
    seg_empty: Annotated[bool, typer.Option(
        "--seg-empty/--no-seg-empty", help="Store a SEG for empty predictions too.")] = True,
    redo: Annotated[bool, typer.Option(
        "--redo", help="Predict instances that already have this model's SEG again.")] = False,
    checkpoint: Checkpoint = "best",
    tta: Tta = False,
    device: Device = None,
    batch_size: BatchSize = 4,
) -> None:
    """Predict a study on a DICOMweb server (WADO-RS) and store the SEG (+ SR / SC) there (STOW-RS)."""
    from pneumoseg.pacs.dicomweb import predict_dicomweb
    from pneumoseg.pacs.outputs import OutputOptions

    predictor = load_predictor(run, checkpoint=checkpoint, tta=tta, device=device, batch_size=batch_size)
    result = predict_dicomweb(predictor, url, study=study, series=series,  # type: ignore[arg-type]
                              options=OutputOptions(sr=sr, sc=sc, seg_empty=seg_empty), redo=redo)
    table = Table(title=f"DICOMweb {url}", show_header=False)
    table.add_row("study" + (" / series" if series else ""), study + (f" / {series}" if series else ""))
    table.add_row("instances", str(result.n_instances))
    table.add_row("predicted", f"{result.n_predicted} ({result.n_positive} with pneumothorax)")
    table.add_row("already done", f"{result.n_already_done} (--redo predicts them again)")
    table.add_row("not radiographs", str(result.n_not_predicted))
    table.add_row("stored", ", ".join(f"{n} {kind.upper()}" for kind, n in result.stored.items() if n) or "nothing")
    console.print(table)
    if result.failures:
        print_failures(result.failures)
        raise fail(f"{len(result.failures)} instance(s) could not be predicted or stored (listed above)")


def register(app: typer.Typer) -> None:
    """Add ``listen`` and ``dicomweb`` to ``app``."""
    app.command("listen")(listen)
    app.command("dicomweb")(dicomweb)
