"""Small synthetic DICOM files for tests: one Secondary Capture builder, uncompressed, any bit depth.

``sc_dataset`` builds the dataset (pixels set with pydicom's ``set_pixel_data``, so Rows, Columns, Bits*,
PixelRepresentation and a fresh SOPInstanceUID follow the array), ``save_dicom`` writes it as a valid
Part 10 file, ``write_dicom`` writes the 8-bit chest radiograph the data and io tests use.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

__all__ = ["NO_UID", "save_dicom", "sc_dataset", "write_dicom"]

NO_UID = ""  # write_dicom(uid=NO_UID): the file has no SOPInstanceUID element


def sc_dataset(arr: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2",
               sop: str = SecondaryCaptureImageStorage, **tags: object) -> FileDataset:
    """A minimal, valid dataset of SOP class ``sop`` (Explicit VR Little Endian) holding ``arr`` uncompressed.

    ``arr``: (H, W), (frames, H, W) or (H, W, 3) uint8/uint16 within ``bits_stored`` bits. Modality is
    "DX"; ``tags`` (DICOM keywords) are set last, so they override anything (Modality="CR", Rows=...).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("synthetic", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits_stored)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def save_dicom(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` to ``path`` as a Part 10 file (preamble, file meta); return ``path``."""
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom(path: Path, pixels: np.ndarray, uid: str | None = None, patient: str = "P1", sex: str = "M",
                view: str = "PA", age: str = "040Y") -> str:
    """Write ``pixels`` (uint8 (H, W)) as a CR chest image to ``path`` (folders made); return the SOPInstanceUID.

    ``uid``: the SOPInstanceUID to store, verbatim (invalid ones too: ``"../x"``, a NUL byte);
    None keeps the valid generated one; ``NO_UID`` leaves the element out.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = sc_dataset(np.ascontiguousarray(pixels, dtype=np.uint8), 8, PatientID=patient, PatientSex=sex,
                    ViewPosition=view, PatientAge=age, Modality="CR", BodyPartExamined="CHEST")
    value = str(ds.SOPInstanceUID) if uid is None else uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid UIDs: that is the point
        if value:
            ds.SOPInstanceUID = value
        else:
            del ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=False)
    return value
