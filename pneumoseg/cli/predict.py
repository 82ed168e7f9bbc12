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

import typer
from rich.table import Table

from pneumoseg.cli._common import PneumosegCommand, cli_errors, console, err_console, fail

__all__ = ["PRECISIONS", "predict", "register"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")


@cli_errors
def predict(
    run: str = typer.Argument(..., help="Run folder, or several as RUN,RUN2,... (ensembled by averaging)."),
    input: Path | None = typer.Argument(None, help="A DICOM, a PNG/JPEG, or a folder of them (recursive); "
                                        "or give --list."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (required, except with --dicomweb)."),
    tta: bool = typer.Option(False, "--tta", help="Horizontal-flip test-time augmentation."),
    submission: Path | None = typer.Option(None, "--submission", help="Submission CSV path (default OUT/submission.csv)."),
    rle_format: str = typer.Option("relative", "--rle-format",
                                   help="relative (the challenge's train-rle.csv and submission format) | "
                                        "absolute (standard 1-based Kaggle RLE, for other tools)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | snapshot-K in every run."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write OUT/overlays/<image_id>.png."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    dicom_seg: bool = typer.Option(False, "--dicom-seg/--no-dicom-seg",
                                   help="Write OUT/seg/<image_id>.dcm, a DICOM SEG, for DICOM inputs with a finding."),
    dicom_seg_empty: bool = typer.Option(False, "--dicom-seg-empty",
                                         help="With --dicom-seg: a SEG for empty predictions too."),
    dicom_sr: bool = typer.Option(False, "--dicom-sr", help="Write OUT/sr/<image_id>.dcm, a DICOM Structured "
                                  "Report (TID 1500: presence, score, area in mm²), for DICOM inputs."),
    dicom_sc: bool = typer.Option(False, "--dicom-sc", help="Write OUT/sc/<image_id>.dcm, a Secondary Capture of "
                                  "the overlay for viewers that cannot show SEG."),
    backend: str = typer.Option("auto", "--backend", help="auto (onnxruntime on CPU when RUN/model.onnx matches "
                                "the checkpoint, else torch) | torch | onnx (onnxruntime; see --onnx)."),
    onnx: str | None = typer.Option(None, "--onnx", help="ONNX file(s) FILE[,FILE2] for --backend onnx "
                                    "(default: RUN/model.onnx of each run)."),
    list_file: Path | None = typer.Option(None, "--list", help="A text file of input paths, one per line "
                                          "(instead of INPUT; relative to the current folder)."),
    devices: int = typer.Option(1, "--devices", min=1, help="Processes per node (GPUs, or CPU processes)."),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, help="Machines (torchrun / SLURM); --out shared."),
    precision: str = typer.Option("32-true", "--precision", help="32-true | bf16-mixed | 16-mixed (GPU)."),
    workers: int = typer.Option(2, "--workers", min=0, help="DataLoader processes decoding inputs per device."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the predictions in --out made with other "
                                   "settings (default: resume when the settings match, else refuse)."),
    dicomweb: str | None = typer.Option(None, "--dicomweb", help="Instead of INPUT: a DICOMweb root URL; fetch "
                                        "--study (WADO-RS) and store the SEG (+ --dicom-sr/--dicom-sc) there "
                                        "(STOW-RS), as `pneumoseg dicomweb`."),
    study: str | None = typer.Option(None, "--study", help="With --dicomweb: the StudyInstanceUID."),
    series: str | None = typer.Option(None, "--series", help="With --dicomweb: only this SeriesInstanceUID."),
) -> None:
    """Predict pneumothorax masks; the submission's rows decode back to the written masks."""
    from pneumoseg.errors import ConfigError
    from pneumoseg.inference.archive import first_input, folder_source, list_source, predict_archive
    from pneumoseg.inference.archive.loop import needs_engine
    from pneumoseg.util.paths import check_output_dir, check_output_file
    from pneumoseg.inference.predictor import BACKENDS, Predictor

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
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {device!r} unknown (valid: cpu, cuda)")
    runs = [Path(r) for r in run.split(",") if r]
    given = input if input is not None else list_file
    assert given is not None
    # Before any work: outputs never inside, or around, the inputs, and writable.
    check_output_dir(out, [given])
    if submission is not None:
        check_output_file(submission, [given], "--submission")
    onnx_files = [Path(f) for f in onnx.split(",") if f] if onnx else None
    engine = needs_engine(devices, num_nodes, precision)
    reason = None
    if engine:  # Lightning places the networks on each rank's device: built on the CPU
        import torch

        target = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "auto" and target != "cpu":
            backend, reason = "torch", f"torch (device {target}; onnxruntime is the default on CPU only)"
    else:  # one process: built where it runs; one file is decoded here, not in a worker
        if input is not None and input.is_file():
            workers = 0
    predictor = Predictor(runs, checkpoint=checkpoint, tta=tta, device="cpu" if engine else device,
                          batch_size=batch_size, backend=backend, onnx=onnx_files)
    if input is not None:
        source, spec = folder_source(input), f"folder:{input.resolve()}"
        first_input(source, f"{input}: no .dcm, .png or .jpg files found")
    else:
        source, spec = list_source(given), f"list:{given.resolve()}"
        first_input(source, f"--list {given}: no input paths in it")
    accelerator = {"cpu": "cpu", "cuda": "gpu"}.get(device or "", "auto")
    result = predict_archive(predictor, source, out, input_spec=spec, submission=submission, overlays=overlays,
                             rle_format=rle_format,  # type: ignore[arg-type]
                             dicom_seg=dicom_seg, dicom_seg_empty=dicom_seg_empty, dicom_sr=dicom_sr,
                             dicom_sc=dicom_sc, devices=devices, num_nodes=num_nodes, accelerator=accelerator,
                             precision=precision, workers=workers, overwrite=overwrite, progress=progress,
                             engine=engine)
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
        for line in result.failures:
            err_console.print(f"[red]failed:[/] {line}", highlight=False, soft_wrap=True)
        raise fail(f"{len(result.failures)} input(s) could not be predicted (listed above)")


def register(app: typer.Typer) -> None:
    """Add ``predict`` to ``app``."""
    app.command("predict", cls=PneumosegCommand)(predict)
