"""``pneumoseg pacs-demo``: a PACS in a box on 127.0.0.1 (Orthanc + DICOMweb, OHIF, ``pneumoseg listen``).

Starts the three on free loopback ports (``pneumoseg.pacs.box``), sends DICOMs into Orthanc (the
demo's synthetic radiographs, pneumothoraces first, or ``--input``), has Orthanc route them to the
listener, waits for the SEGs to arrive, prints the OHIF link of each processed study, and runs
until Ctrl-C / SIGTERM, which stops everything.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from pneumoseg.cli._common import Device, PneumosegCommand, cli_errors, console, err_console

if TYPE_CHECKING:
    from pneumoseg.pacs.box import PacsBox

__all__ = ["pacs_demo", "register"]


@cli_errors
def pacs_demo(
    run: Annotated[str | None, typer.Option(
        "--run", metavar="RUN[,RUN2]", help="Run folder(s) to predict with (default: the demo's, DEMO/run, built "
                                            "with `pneumoseg demo` when absent).")] = None,
    input_: Annotated[Path | None, typer.Option(
        "--input", metavar="PATH", help="A DICOM file or folder to send (default: the demo's synthetic DICOMs, "
                                        "pneumothoraces first).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Send at most this many DICOM files.")] = 4,
    demo: Annotated[Path, typer.Option("--demo", metavar="DIR", help="The demo's folder (its run and DICOMs).")] = (
        Path("demo-out")),
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Orthanc's storage, the listener's queue, logs.")] = Path("pacs-demo-out"),
    ohif: Annotated[Path | None, typer.Option(
        "--ohif", metavar="DIR", help="OHIF's built dist/ folder (default: $PNEUMOSEG_OHIF_DIR or .ohif/dist, where "
                                      "`make install` puts it).")] = None,
    sr: Annotated[bool, typer.Option("--sr", help="The listener also sends a DICOM SR (presence, score, area).")] = False,
    sc: Annotated[bool, typer.Option(
        "--sc/--no-sc", help="The listener also sends the overlay as a Secondary Capture.")] = True,
    device: Device = None,
) -> None:
    """Orthanc + OHIF + `pneumoseg listen` on 127.0.0.1: send DICOMs, print the OHIF links; Ctrl-C stops all."""
    from pneumoseg.pacs.box import PacsBox, demo_inputs, demo_run, find_ohif, find_orthanc

    dist = find_ohif(ohif)  # fail before any training when the viewer or Orthanc is missing
    find_orthanc()

    def log(message: str) -> None:
        err_console.print(escape(message), highlight=False, soft_wrap=True)

    run_dirs = run or str(demo_run(demo, log=log))
    stop, serving = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if not serving.is_set():  # still starting or sending: leave at once (the with block stops what started)
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    if input_ is not None:
        files = [input_] if input_.is_file() else demo_inputs(input_, limit)
    else:
        files = demo_inputs(demo / "synth" / "dicom", limit, demo / "synth" / "train-rle.csv")
    extra = [*(["--sr"] if sr else []), *(["--sc"] if sc else [])]
    try:
        _serve(PacsBox(run_dirs, out, ohif_dir=dist, listen_args=extra, device=device), files, stop, serving, log)
    except KeyboardInterrupt:
        log("interrupted")
    log("stopped: listener, OHIF and Orthanc")


def _serve(box: PacsBox, files: list[Path], stop: threading.Event, serving: threading.Event,
           log: Callable[[str], None]) -> None:
    """Start ``box``, send ``files``, print the links, serve until ``stop``; the box is closed on the way out."""
    with box:
        assert box.orthanc is not None and box.web is not None
        log(f"Orthanc {box.orthanc.url} (DICOM port {box.orthanc.dicom_port}), OHIF {box.web.url}, "
            f"pneumoseg listen with {box.run}; logs in {box.workdir}")
        log(f"sending {len(files)} DICOM file(s) to Orthanc, routed to the listener ...")
        sent = box.send(files)
        box.wait_processed(sent)
        for study in sent:
            counts = ", ".join(f"{n} {m}" for m, n in sorted(box.results(study).items()))
            console.print(f"{escape(box.viewer_url(study))}  ({counts})", highlight=False, soft_wrap=True)
        console.print(f"study list: {box.web.url}/   Orthanc Explorer: {box.orthanc.url}/app/explorer.html",
                      highlight=False, soft_wrap=True)
        console.print("Open a link, then the SEG in the study browser (double-click) shows the overlay. "
                      "Press Ctrl-C (or send SIGTERM) to stop everything.", highlight=False)
        serving.set()
        while not stop.wait(0.5):
            if box.listener is not None and box.listener.poll() is not None:
                log(f"pneumoseg listen exited ({box.listener.returncode}); see {box.listen_log}")
                break
        log("stopping ...")


def register(app: typer.Typer) -> None:
    """Add ``pacs-demo`` to ``app``."""
    app.command("pacs-demo", cls=PneumosegCommand)(pacs_demo)
