"""``pneumoseg export RUN [--onnx FILE] [--monai-bundle DIR]``: the trained network as ONNX and/or a MONAI bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pneumoseg.cli._common import Checkpoint, cli_errors, console

__all__ = ["export", "register"]


@cli_errors
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder (pneumoseg train output).")],
    onnx: Annotated[Path | None, typer.Option(
        "--onnx", metavar="FILE",
        help="ONNX file to write (default RUN/model.onnx, where `predict --backend onnx` looks).")] = None,
    checkpoint: Checkpoint = "best",
    opset: Annotated[int | None, typer.Option(
        "--opset", min=7, metavar="N", help="ONNX opset (default: the exporter's).")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", help="Check ONNX vs PyTorch probabilities (max diff 1e-3) on a random input.")] = True,
    monai_bundle: Annotated[Path | None, typer.Option(
        "--monai-bundle", metavar="DIR",
        help="Also (or, without --onnx, only) write a MONAI bundle to this new folder: configs/metadata.json, "
             "configs/inference.json, models/model.ts, for `python -m monai.bundle run`.")] = None,
) -> None:
    """Export a run's network to ONNX (dynamic batch, logits out, size / normalisation / post-processing in its
    metadata) and/or as a MONAI bundle that MONAI's runner executes without pneumoseg."""
    if monai_bundle is not None:
        from pneumoseg.inference.monai_bundle import export_monai_bundle

        bundle = export_monai_bundle(run, monai_bundle, checkpoint=checkpoint)
        console.print(f"MONAI bundle: {bundle} (run it with `python -m monai.bundle run --config_file "
                      f"{bundle / 'configs/inference.json'} --meta_file {bundle / 'configs/metadata.json'} "
                      f"--bundle_root {bundle} --dataset_dir INPUTS --output_dir OUT`; see {bundle / 'docs/README.md'})")
        if onnx is None:
            return
    _export_onnx(run, onnx, checkpoint, opset, verify)


def _export_onnx(run: Path, onnx: Path | None, checkpoint: str, opset: int | None, verify: bool) -> None:
    from pneumoseg.inference.onnx import export_onnx, read_onnx_metadata
    from pneumoseg.inference.onnx import ONNX_NAME
    from pneumoseg.scoring.postprocess import PostProcess

    path = export_onnx(run, onnx or run / ONNX_NAME, checkpoint=checkpoint, opset=opset, verify=verify)
    meta = read_onnx_metadata(path)
    table = Table(title=f"ONNX export ({meta.model_name}, {checkpoint})", show_header=False)
    table.add_row("file", f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    table.add_row("input", f"image float32 (N, {meta.in_channels}, {meta.size}, {meta.size}), "
                  f"(x / 255 - {meta.mean}) / {meta.std}")
    table.add_row("output", f"logits float32 (N, 1, {meta.size}, {meta.size}); sigmoid -> probabilities")
    table.add_row("post-processing", PostProcess.from_dict(meta.postprocess).describe())
    table.add_row("verified", "yes (max |p_onnx - p_torch| <= 1e-3)" if verify else "no")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""
    app.command("export")(export)
