"""Small synthetic DICOM files for tests (Secondary Capture, 8-bit MONOCHROME2, uncompressed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

__all__ = ["NO_UID", "write_dicom"]

NO_UID = ""  # write_dicom(uid=NO_UID): the file has no SOPInstanceUID element


def write_dicom(path: Path, pixels: np.ndarray, uid: str | None = None, patient: str = "P1", sex: str = "M",
                view: str = "PA", age: str = "040Y") -> str:
    """Write ``pixels`` (uint8 (H, W)) to ``path``; return the SOPInstanceUID written.

    ``uid``: the SOPInstanceUID to store, verbatim (invalid ones too: ``"../x"``, a NUL byte);
    None generates a valid one; ``NO_UID`` leaves the element out.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.PatientID, ds.PatientSex, ds.ViewPosition, ds.PatientAge = patient, sex, view, age
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.set_pixel_data(np.ascontiguousarray(pixels, dtype=np.uint8), "MONOCHROME2", 8)
    value = str(meta.MediaStorageSOPInstanceUID) if uid is None else uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid UIDs: that is the point
        if value:
            ds.SOPInstanceUID = value
        elif "SOPInstanceUID" in ds:
            del ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=False)
    return value
