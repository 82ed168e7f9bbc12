"""External validation: a labelled DICOM / PNG folder (RLE CSV or mask folder) scored like a split.

``read_labelled_set`` pairs images and labels (SOPInstanceUID, else file stem); ``evaluate_external``
predicts each image at its native resolution through ``Predictor.predict_batch`` and writes
``RUN/eval/<data name>/`` with the files of ``pneumoseg.evaluation.evaluate``. ``eval_case_loader``
reads the cases of any existing evaluation folder back (a split's from the cache, an external set's
from the files ``images.csv`` recorded), for compare and report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.data.dataset import SPLITS
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.io.images import resize_image
from pneumoseg.io.layouts import match_label, read_layout_mask
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.io.rle import Annotations, read_annotations
from pneumoseg.util.paths import safe_name
from pneumoseg.evaluation.cases import CaseLoader, cache_loader
from pneumoseg.evaluation.evaluate import SplitItem, evaluate_items
from pneumoseg.inference.inputs import InputImage, find_inputs, load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.util.progress import progress_bar
from pneumoseg.runs import EVAL_IMAGES_FILE, eval_dir, read_eval_images


__all__ = [
    "ExternalResult",
    "LabelledSet",
    "eval_case_loader",
    "evaluate_external",
    "external_name",
    "iter_labelled",
    "labelled_loader",
    "read_labelled_set",
]


# ---------------------------------------------------------------- external labelled sets


@dataclass
class LabelledSet:
    """Images of a folder (DICOM / PNG / JPEG) and their labels: an RLE CSV or a folder of masks.

    ``ids``: the ImageIds that have a label; ``truth(image_id, shape)`` -> bool (H, W). ``failures``:
    one line per file that could not be scored; ``matched_by``: how labels were found (uid | stem).
    """

    data: Path
    labels: Path
    files: list[Path]
    ids: set[str]
    annotations: Annotations | None = None
    failures: list[str] = field(default_factory=list)
    matched_by: dict[str, int] = field(default_factory=lambda: {"uid": 0, "stem": 0})
    sources: dict[str, Path] = field(default_factory=dict)

    def truth(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        """bool (H, W) truth of ``image_id`` for an image of ``shape``; DataError on a size mismatch."""
        if self.annotations is not None:
            return np.ascontiguousarray(self.annotations.mask(image_id, *shape))
        return read_layout_mask(self.labels / f"{image_id}.png", shape, self.sources.get(image_id))

    def load(self, path: Path, count: bool = True) -> InputImage:
        """The input with its label's ImageId (SOPInstanceUID, else the file stem); DataError when unlabelled.

        ``count``: add the match to ``matched_by``."""
        image = load_input(path)
        key, how = match_label(path.stem, self.ids, image.image_id if image.meta is not None else None)
        if how != "none":
            self.matched_by[how] += count
            return image if key == image.image_id else replace(image, image_id=safe_name(key, path, "file stem"))
        looked = "SOPInstanceUID and file stem" if image.meta is not None else "file stem"
        raise DataError(f"{path}: no label for ImageId {image.image_id} in {self.labels} (looked up the {looked})")


def read_labelled_set(data: str | os.PathLike[str], rle: str | os.PathLike[str] | None = None,
                      png_dir: str | os.PathLike[str] | None = None, find: bool = True) -> LabelledSet:
    """The inputs under ``data`` (``pneumoseg.inference.inputs.find_inputs``; none when ``find`` is
    False: the labels only) and exactly one label source: ``rle`` (challenge CSV, relative RLE, masks at
    each image's size) or ``png_dir`` (``<ImageId>.png`` masks, 0/255, at each image's size)."""
    if (rle is None) == (png_dir is None):
        raise DataError("external evaluation needs exactly one label source: --rle CSV or --png-dir DIR")
    files = find_inputs(data) if find else []
    if rle is not None:
        annotations = read_annotations(rle)
        return LabelledSet(Path(data), Path(rle), files, set(annotations), annotations)
    folder = Path(png_dir or "")
    if not folder.is_dir():
        raise DataError(f"--png-dir {folder}: no such folder (expected <ImageId>.png masks)")
    return LabelledSet(Path(data), folder, files, {p.stem for p in folder.glob("*.png")})


def iter_labelled(predictor: Predictor, labelled: LabelledSet, progress: bool = True) -> Iterator[SplitItem]:
    """Every labelled input at its own resolution (``Predictor.predict_batch``, the one inference path).

    A file that cannot be read, has an unsafe / invalid id, no label, a duplicate id or a mask of
    another size is skipped with one line in ``labelled.failures``.
    """
    files = labelled.files
    with progress_bar(progress) as bar:
        task = bar.add_task(f"predict {labelled.data.name}", total=len(files))
        for start in range(0, len(files), predictor.batch_size):
            batch: list[tuple[InputImage, np.ndarray]] = []
            for path in files[start:start + predictor.batch_size]:
                try:
                    image = labelled.load(path)
                    if image.image_id in labelled.sources:
                        raise DataError(f"{path}: ImageId {image.image_id} already evaluated from "
                                        f"{labelled.sources[image.image_id]}")
                    batch.append((image, labelled.truth(image.image_id, image.pixels.shape)))
                    labelled.sources[image.image_id] = path
                except PneumosegError as exc:
                    labelled.failures.append(str(exc))
            preds = predictor.predict_batch([im for im, _ in batch]) if batch else []
            for (image, truth), pred in zip(batch, preds, strict=True):
                spacing = image.meta.pixel_spacing_mm if image.meta is not None else None
                yield SplitItem(image.image_id, resize_image(image.pixels, predictor.size), pred.prob, truth,
                                str(image.path), spacing)
            bar.advance(task, len(files[start:start + predictor.batch_size]))


def labelled_loader(labelled: LabelledSet, size: int) -> CaseLoader:
    """The ``CaseLoader`` of an external set: the file ``labelled.sources[image_id]`` read again (image at
    ``size``) and its label; DataError naming the file when it is unknown or gone."""
    def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        path = labelled.sources.get(image_id)
        if path is None:
            raise DataError(f"ImageId {image_id}: no source file recorded for it in {labelled.data}")
        if not path.is_file():
            raise DataError(f"{path} (ImageId {image_id}) not found: moved or deleted since the evaluation")
        image = labelled.load(path, count=False)
        return resize_image(image.pixels, size), labelled.truth(image.image_id, image.pixels.shape)

    return load


def eval_case_loader(ev: str | os.PathLike[str], metrics: Mapping[str, object], cache: str | None,
                     size: int) -> CaseLoader:
    """The ``CaseLoader`` of an existing evaluation folder ``ev`` (images at ``size``, truth at the source size).

    An external set (``metrics["source"] == "external"``) is read again from the files ``ev/images.csv``
    recorded, with the labels ``metrics["labels"]`` names (an RLE CSV or a folder of PNG masks); a split
    from the run's ``cache``. DataError (one line: why the cases have no image) when they are not
    reachable from here; the loader itself raises DataError naming a file that has gone.
    """
    ev = Path(ev)
    if metrics.get("source") != "external":
        if not cache:
            raise DataError("the run's config names no data.cache: the split's images cannot be found")
        if not Path(cache).is_dir():
            raise DataError(f"cache {cache} (the run's data.cache) not found from here")
        return cache_loader(Path(cache), size)
    data, labels = Path(str(metrics.get("data", ""))), Path(str(metrics.get("labels", "")))
    if not labels.exists():
        raise DataError(f"labels {labels} (recorded in {ev / 'metrics.json'}) not found from here")
    images = read_eval_images(ev)
    if images is None:
        raise DataError(f"{ev / EVAL_IMAGES_FILE} not found (evaluated by an older pneumoseg): re-run "
                        f"`pneumoseg evaluate RUN --data {data} ...` to record where each image came from")
    labelled = read_labelled_set(data, rle=None if labels.is_dir() else labels,
                                 png_dir=labels if labels.is_dir() else None, find=False)
    labelled.sources = {i: Path(s) for i, s in zip(images["image_id"], images["source"], strict=True) if s}
    return labelled_loader(labelled, size)


@dataclass(frozen=True)
class ExternalResult:
    """What ``evaluate_external`` wrote (``out_dir``), its metrics and the files it skipped (one line each)."""

    out_dir: Path
    metrics: dict[str, object]
    failures: list[str]


def external_name(data: str | os.PathLike[str], name: str | None = None) -> str:
    """The eval folder name of an external set: ``name`` or the data folder's name (never a split name)."""
    chosen = name or Path(data).resolve().name
    safe_name(chosen, data, "data set name")
    if chosen in SPLITS:
        raise DataError(f"data set name {chosen!r} would overwrite the evaluation of split {chosen!r}: "
                        "choose another with --name")
    return chosen


def evaluate_external(predictor: Predictor, run_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                      rle: str | os.PathLike[str] | None = None, png_dir: str | os.PathLike[str] | None = None,
                      name: str | None = None, postprocess: PostProcess | None = None, n_cases: int = 8,
                      progress: bool = True) -> ExternalResult:
    """External validation: score every labelled image under ``data`` at its native resolution.

    Writes ``RUN/eval/<name>/`` (default name: the data folder's) with the same files as a split.
    Labels are matched by SOPInstanceUID, else by file stem (``metrics.json`` ``matched_by`` counts
    both). Files that cannot be scored are listed in ``failures`` (and ``metrics.json``); the rest
    are scored.
    """
    chosen = external_name(data, name)
    labelled = read_labelled_set(data, rle, png_dir)
    load_case = labelled_loader(labelled, predictor.size)
    out = eval_dir(run_dir, chosen)
    extra = {"source": "external", "data": str(labelled.data), "labels": str(labelled.labels),
             "matched_by": labelled.matched_by, "failures": labelled.failures}
    items = iter_labelled(predictor, labelled, progress)
    try:
        metrics = evaluate_items(predictor, items, out, chosen, load_case, postprocess, n_cases, extra)
    except DataError:
        if labelled.failures:
            raise DataError(f"{chosen}: no image could be evaluated; first problem: {labelled.failures[0]}") from None
        raise
    n_unused = len(labelled.ids - set(labelled.sources))
    if n_unused:
        metrics["labels_without_image"] = n_unused
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    return ExternalResult(out, metrics, labelled.failures)
