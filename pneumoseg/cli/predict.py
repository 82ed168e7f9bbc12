"""``pneumoseg predict RUN INPUT --out DIR``: masks, overlays, predictions.csv, submission.csv.

Runs ``pneumoseg.inference.predict_archive``: inputs are streamed (a folder, or ``--list FILE``
with one path per line); one process predicts in this process through ``Predictor`` (no engine
start-up), ``--devices N [--num-nodes M]`` (or a reduced ``--precision``) runs Lightning's
prediction loop over DDP processes (torchrun / SLURM detected), with byte-identical outputs.
Rerunning the same command into the same ``--out`` resumes: complete images are skipped; other
settings are refused unless ``--overwrite``.

``--dicom-seg`` adds ``DIR/seg/<image_id>.dcm`` (DICOM Segmentation) per DICOM input with a
non-empty mask (``--dicom-seg-empty``: every DICOM input). ``--backend onnx`` runs exported
networks with onnxruntime: ``--onnx FILE[,FILE2]``, else ``RUN/model.onnx`` (``pneumoseg export
RUN``) or RUN itself when it is a ``.onnx`` file. The default, ``--backend auto``, uses
``RUN/model.onnx`` on CPU when it was exported from the checkpoint asked for (fingerprint), else
PyTorch; the line ``backend: ...`` says which and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import (
    Backend,
    BatchSize,
    Checkpoint,
    Device,
    Progress,
    Runs,
    Tta,
    cli_errors,
    console,
    err_console,
    fail,
    load_predictor,
    no_new_empty_folders,
    print_failures,
)

__all__ = ["PRECISIONS", "predict", "register"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")


@cli_errors
def predict(
    run: Runs,
    input: Annotated[Path | None, typer.Argument(
        help="A DICOM, a PNG/JPEG, or a folder of them (recursive); or give --list.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (required, except with --dicomweb).")] = None,
    tta: Tta = False,
    submission: Annotated[Path | None, typer.Option(
        "--submission", help="Submission CSV path (default OUT/submission.csv).")] = None,
    rle_format: Annotated[str, typer.Option(
        "--rle-format", metavar="FORMAT", help="relative (the challenge's train-rle.csv and submission format) | "
                                               "absolute (standard 1-based Kaggle RLE, for other tools).")] = "relative",
    checkpoint: Checkpoint = "best",
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays",
                                           help="Write OUT/overlays/<image_id>.png.")] = True,
    device: Device = None,
    batch_size: BatchSize = 4,
    progress: Progress = True,
    dicom_seg: Annotated[bool, typer.Option(
        "--dicom-seg/--no-dicom-seg",
        help="Write OUT/seg/<image_id>.dcm, a DICOM SEG, for DICOM inputs with a finding.")] = False,
    dicom_seg_empty: Annotated[bool, typer.Option(
        "--dicom-seg-empty", help="With --dicom-seg: a SEG for empty predictions too.")] = False,
    dicom_sr: Annotated[bool, typer.Option(
        "--dicom-sr", help="Write OUT/sr/<image_id>.dcm, a DICOM Structured Report (TID 1500: presence, score, "
                           "area in mm²), for DICOM inputs.")] = False,
    dicom_sc: Annotated[bool, typer.Option(
        "--dicom-sc", help="Write OUT/sc/<image_id>.dcm, a Secondary Capture of the overlay for viewers that "
                           "cannot show SEG.")] = False,
    backend: Backend = "auto",
    onnx: Annotated[str | None, typer.Option(
        "--onnx", metavar="FILE[,FILE2]",
        help="ONNX file(s) for --backend onnx (default: RUN/model.onnx of each run).")] = None,
    list_file: Annotated[Path | None, typer.Option(
        "--list", metavar="FILE",
        help="A text file of input paths, one per line (instead of INPUT; relative to the current folder).")] = None,
    devices: Annotated[int, typer.Option("--devices", min=1, metavar="N",
                                         help="Processes per node (GPUs, or CPU processes).")] = 1,
    num_nodes: Annotated[int, typer.Option("--num-nodes", min=1, metavar="N",
                                           help="Machines (torchrun / SLURM); --out shared.")] = 1,
    precision: Annotated[str, typer.Option("--precision", metavar="PRECISION",
                                           help="32-true | bf16-mixed | 16-mixed (GPU).")] = "32-true",
    workers: Annotated[int, typer.Option("--workers", min=0, metavar="N",
                                         help="DataLoader processes decoding inputs per device.")] = 2,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the predictions in --out made with other settings (default: resume when the "
                            "settings match, else refuse).")] = False,
    dicomweb: Annotated[str | None, typer.Option(
        "--dicomweb", metavar="URL", help="Instead of INPUT: a DICOMweb root URL; fetch --study (WADO-RS) and store "
                                          "the SEG (+ --dicom-sr/--dicom-sc) there (STOW-RS), as `pneumoseg "
                                          "dicomweb`.")] = None,
    study: Annotated[str | None, typer.Option("--study", metavar="UID",
                                              help="With --dicomweb: the StudyInstanceUID.")] = None,
    series: Annotated[str | None, typer.Option("--series", metavar="UID",
                                               help="With --dicomweb: only this SeriesInstanceUID.")] = None,
) -> None:
    """Predict pneumothorax masks; the submission's rows decode back to the written masks.

    A failed call (bad input, run or options; no readable image) leaves no new empty output folder behind.
    """
    from pneumoseg.errors import ConfigError
    from pneumoseg.inference.predictor import BACKENDS
    from pneumoseg.util.devices import parse_device

    if dicomweb is not None:
        from pneumoseg.cli.listen import dicomweb as dicomweb_command

        if study is None or input is not None or list_file is not None or out is not None:
            raise ConfigError("--dicomweb URL needs --study UID and no INPUT, --list or --out (results go back to "
                              "the server)")
        dicomweb_command(run, url=dicomweb, study=study, series=series, sr=dicom_sr, sc=dicom_sc,
                         seg_empty=True, redo=overwrite, checkpoint=checkpoint, tta=tta, device=device,
                         batch_size=batch_size)
        return
    if out is None:
        raise ConfigError("--out DIR is required (or --dicomweb URL --study UID)")
    if rle_format not in ("relative", "absolute"):
        raise ConfigError(f"--rle-format {rle_format!r} unknown (valid: relative, absolute)")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} unknown (valid: {', '.join(BACKENDS)})")
    if onnx and backend != "onnx":
        raise ConfigError("--onnx needs --backend onnx")
    if (input is None) == (list_file is None):
        raise ConfigError("give either INPUT (a file or folder) or --list FILE, not both or neither")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} unknown (valid: {', '.join(PRECISIONS)})")
    device = parse_device(device)
    given = input if input is not None else list_file
    assert given is not None
    with no_new_empty_folders(out, *([submission.parent] if submission is not None else [])):
        _predict(run, input, given, out, submission=submission, rle_format=rle_format, checkpoint=checkpoint,
                 tta=tta, overlays=overlays, device=device, batch_size=batch_size, progress=progress,
                 dicom_seg=dicom_seg, dicom_seg_empty=dicom_seg_empty, dicom_sr=dicom_sr, dicom_sc=dicom_sc,
                 backend=backend, onnx=onnx, devices=devices, num_nodes=num_nodes, precision=precision,
                 workers=workers, overwrite=overwrite)


def _predict(run: str, input: Path | None, given: Path, out: Path, *, submission: Path | None, rle_format: str,
             checkpoint: str, tta: bool, overlays: bool, device: str | None, batch_size: int, progress: bool,
             dicom_seg: bool, dicom_seg_empty: bool, dicom_sr: bool, dicom_sc: bool, backend: str,
             onnx: str | None, devices: int, num_nodes: int, precision: str, workers: int,
             overwrite: bool) -> None:
    """``predict`` once its options are checked: INPUT (a file or folder) or --list FILE (``given``) into OUT."""
    from pneumoseg.errors import ConfigError
    from pneumoseg.inference.archive import input_source, predict_archive
    from pneumoseg.inference.archive.loop import needs_engine
    from pneumoseg.util.devices import accelerator_of
    from pneumoseg.util.paths import check_output_dir, check_output_file

    # Before any work: outputs never inside, or around, the inputs, and writable.
    check_output_dir(out, [given])
    if submission is not None:
        check_output_file(submission, [given], "--submission")
    onnx_files = [Path(f) for f in onnx.split(",") if f] if onnx else None
    engine = needs_engine(devices, num_nodes, precision)
    reason = None
    if engine:  # Lightning places the networks on each rank's device: built on the CPU
        import torch

        if device is not None and ":" in device:
            raise ConfigError(f"--device {device} names one GPU; with --devices, --num-nodes or --precision "
                              f"{precision} give --device cuda (Lightning places each process)")
        target = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "auto" and target != "cpu":
            backend, reason = "torch", f"torch (device {target}; onnxruntime is the default on CPU only)"
    else:  # one process: built where it runs; one file is decoded here, not in a worker
        if input is not None and input.is_file():
            workers = 0
    predictor = load_predictor(run, checkpoint=checkpoint, tta=tta, device="cpu" if engine else device,
                               batch_size=batch_size, backend=backend, onnx=onnx_files)
    source, spec = input_source(input) if input is not None else input_source(list_file=given)
    result = predict_archive(predictor, source, out, input_spec=spec, submission=submission, overlays=overlays,
                             rle_format=rle_format,  # type: ignore[arg-type]
                             dicom_seg=dicom_seg, dicom_seg_empty=dicom_seg_empty, dicom_sr=dicom_sr,
                             dicom_sc=dicom_sc, devices=devices, num_nodes=num_nodes,
                             accelerator=accelerator_of(device), precision=precision, workers=workers,
                             overwrite=overwrite, progress=progress, engine=engine)
    if result is None:  # another rank: rank 0 merges and reports
        return
    console.print(f"backend: {reason or predictor.backend_reason}", highlight=False, soft_wrap=True)
    what = predictor.model_name + (", TTA" if tta else "") + (", onnxruntime" if predictor.backend == "onnx" else "")
    table = Table(title=f"Predictions ({what})", show_header=False)
    table.add_row("images", str(result.n_images))
    table.add_row("with pneumothorax", str(result.n_positive))
    if result.n_resumed:
        table.add_row("resumed", f"{result.n_resumed} complete from an earlier run, "
                      f"{result.n_images - result.n_resumed} predicted now")
    table.add_row("post-processing", f"{predictor.postprocess.describe()} ({predictor.postprocess_source})")
    table.add_row("masks", str(out / "masks"))
    if overlays:
        table.add_row("overlays", str(out / "overlays"))
    table.add_row("predictions", str(result.predictions_csv))
    table.add_row("submission", str(result.submission_csv))
    if dicom_seg:
        notes = []
        if result.seg_skipped_empty:
            notes.append(f"{result.seg_skipped_empty} empty prediction(s) skipped; --dicom-seg-empty writes them")
        if result.seg_skipped_not_dicom:
            notes.append(f"{result.seg_skipped_not_dicom} PNG/JPEG input(s): no source DICOM")
        table.add_row("DICOM SEG", f"{result.n_seg} in {out / 'seg'}" + (f" ({'; '.join(notes)})" if notes else ""))
    if dicom_sr:
        table.add_row("DICOM SR", f"{result.n_sr} in {out / 'sr'}")
    if dicom_sc:
        table.add_row("DICOM SC overlays", f"{result.n_sc} in {out / 'sc'}")
    console.print(table)
    for line in result.warnings:
        err_console.print(line, highlight=False, soft_wrap=True, markup=False)
    if result.failures:
        print_failures(result.failures)
        raise fail(f"{len(result.failures)} input(s) could not be predicted (listed above)")


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app``."""
    app.command("predict")(predict)
