"""Synthetic chest radiographs with pneumothoraces, written in the challenge's layout.

``generate_dataset(out)`` writes

* ``out/dicom/<SOPInstanceUID>.dcm``: 8-bit MONOCHROME2 CR, Secondary Capture, uncompressed
  (Explicit VR Little Endian), PatientID/Age ("045Y")/Sex, ViewPosition PA|AP, 1-4 images a patient;
* ``out/train-rle.csv``: header ``ImageId, EncodedPixels``, one row per annotation, `` -1`` when
  there is none, the challenge's relative column-major RLE (``pneumoseg.io.rle.rle_encode``);
* ``out/README.txt``: says that the data is synthetic, in its first words (``SYNTH_MARKER``):
  ``pneumoseg prepare`` records it in ``cache.json`` (``is_synthetic_source``), and a run trained on
  that cache in its ``provenance.json``.

The pixels come from ``pneumoseg.data.phantom``. Image ``i`` draws from
``SeedSequence(seed, spawn_key=(0, i))`` and patient ``j`` from ``(1, j)``, so an image does not
depend on ``n``.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pneumoseg.util.atomic import atomic_path, atomic_write_text
from pneumoseg.data.phantom import (
    MIN_SIZE,
    POSITIVE_RATE,
    Anatomy,
    Phantom,
    make_phantom,
    render_phantom,
    sample_anatomy,
)
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.util.progress import progress_bar
from pneumoseg.io.rle import rle_encode

__all__ = ["POSITIVE_RATE", "SYNTH_MARKER", "Anatomy", "Phantom", "SynthSummary", "generate_dataset",
           "is_synthetic_source", "make_phantom", "render_phantom", "sample_anatomy"]

SYNTH_MARKER = "SYNTHETIC DATA:"  #: the first words of README.txt, beside dicom/: the data set is synthetic


@dataclass
class SynthSummary:
    """What ``generate_dataset`` wrote; ``paths`` are the DICOM files in image order."""

    n_images: int
    n_positive: int
    n_patients: int
    n_rows: int
    out_dir: Path
    csv_path: Path
    paths: list[Path] = field(default_factory=list)


_README = SYNTH_MARKER + """ procedural phantoms, not patients; no clinical or research conclusions.

Written by `pneumoseg synth` (seed {seed}): {n} chest-radiograph phantoms of {size}x{size} px for
{patients} made-up patients; {pos} show a simulated pneumothorax (a dark crescent along the chest
wall, no lung markings, a thin bright pleural line). Layout as the SIIM-ACR challenge:
dicom/<SOPInstanceUID>.dcm (8-bit CR, uncompressed) and train-rle.csv (ImageId, EncodedPixels:
one row per annotation, -1 = none; RLE relative to the previous run's end, column-major).
"""


def _patients(seed: int) -> Iterator[tuple[Anatomy, dict[str, str]]]:
    """Endless (anatomy, DICOM patient fields) per image: patient ``j`` (own generator) has 1-4 images."""
    for j in itertools.count():
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, j)))
        count = int(rng.choice([1, 2, 3, 4], p=[0.5, 0.25, 0.15, 0.1]))
        anatomy = sample_anatomy(rng)
        meta = {"patient_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
                "sex": "F" if anatomy.female else "M", "age": f"{int(rng.integers(16, 91)):03d}Y"}
        yield from [(anatomy, meta)] * count


def _dicom(image: np.ndarray, meta: dict[str, str], uids: tuple[str, str, str]) -> Dataset:
    """A Secondary Capture CR dataset holding ``image`` uint8 (H, W); ``uids`` = (SOP, study, series)."""
    sop, study, series = uids
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = UID(sop)
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "19010101", "000000.00", ""
    ds.Modality, ds.ConversionType, ds.ReferringPhysicianName = "CR", "WSD", ""
    ds.SeriesDescription = f"view: {meta['view']}"
    ds.PatientName = ds.PatientID = meta["patient_id"]
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "", meta["sex"], meta["age"]
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", meta["view"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation = "", 1, 1, ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [round(0.143 * 1024 / image.shape[0], 6)] * 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    return ds


def _check_out_dir(out: Path, overwrite: bool) -> None:
    old = sorted((out / "dicom").glob("*.dcm")) if (out / "dicom").is_dir() else []
    if old and not overwrite:
        raise DataError(f"{out / 'dicom'} already holds {len(old)} .dcm files: choose an empty folder "
                        "or pass overwrite=True (--overwrite) to replace them")
    for path in old:
        path.unlink()


def generate_dataset(out_dir: str | Path, n: int = 200, size: int = 512, seed: int = 0,
                     progress: bool = True, overwrite: bool = False) -> SynthSummary:
    """Write ``n`` phantoms of ``size`` px to ``out_dir`` in the challenge's layout (see module doc).

    Patients get 1-4 images each; about ``POSITIVE_RATE`` of the images are positive and 10 % of
    those have 2-3 annotation rows. Deterministic in ``seed``; image ``i`` does not depend on ``n``.
    """
    if n < 1:
        raise ConfigError(f"synth: n must be >= 1, got {n}")
    if size < MIN_SIZE:
        raise ConfigError(f"synth: size must be >= {MIN_SIZE} px, got {size}")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    rows = ["ImageId, EncodedPixels"]
    paths: list[Path] = []
    patients: set[str] = set()
    n_positive = 0
    with progress_bar(progress, transient=True) as bar:
        images = bar.track(range(n), description="synthesising phantoms")
        for i, (anatomy, meta) in zip(images, _patients(seed), strict=False):  # _patients is endless
            phantom = render_phantom(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, i))),
                                     size, anatomy=anatomy)
            sop, study, series = (generate_uid(entropy_srcs=[f"pneumoseg-synth:{seed}:{i}:{kind}"])
                                  for kind in ("sop", "study", "series"))
            paths.append(out / "dicom" / f"{sop}.dcm")
            with atomic_path(paths[-1]) as tmp:
                ds = _dicom(phantom.image, {**meta, "view": phantom.view}, (sop, study, series))
                ds.save_as(tmp, enforce_file_format=True)
            rows += [f"{sop}, {rle_encode(mask)}" for mask in phantom.masks] or [f"{sop}, -1"]
            n_positive += bool(phantom.masks)
            patients.add(meta["patient_id"])
    csv_path = out / "train-rle.csv"
    atomic_write_text(csv_path, "\n".join(rows) + "\n")
    atomic_write_text(out / "README.txt", _README.format(seed=seed, n=n, size=size, patients=len(patients),
                                                         pos=n_positive))
    return SynthSummary(n, n_positive, len(patients), len(rows) - 1, out, csv_path, paths)


def is_synthetic_source(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (a data folder, e.g. ``OUT/dicom``) or its parent was written by ``generate_dataset``:
    it holds a ``README.txt`` that starts with ``SYNTH_MARKER``. False otherwise (no error)."""
    folder = Path(path)
    for where in (folder, folder.parent):
        try:
            with open(where / "README.txt", encoding="utf-8", errors="replace") as fh:
                if fh.read(len(SYNTH_MARKER)) == SYNTH_MARKER:
                    return True
        except OSError:
            continue
    return False
