"""pneumoseg next to a PACS: a DICOM node (``listen``) and a DICOMweb client (``dicomweb``).

* ``outputs``  which instances are predicted (CR / DX images, and Secondary Captures whose
  Modality is CR / DX / DR, as the challenge's files are) and the SEG / SR / SC made for each;
* ``queue``    the listener's on-disk queue: one state file per instance, received -> predicted -> sent;
* ``listen``   the pynetdicom node: C-ECHO, C-STORE queued on disk before acknowledging, a worker
  that predicts and C-STOREs the results to the destination;
* ``dicomweb`` QIDO-RS list, WADO-RS fetch, predict, STOW-RS store (dicomweb-client).

``import pneumoseg.pacs`` is light: pynetdicom and dicomweb-client load with ``listen`` / ``dicomweb``.
"""

from __future__ import annotations

from pneumoseg.errors import PneumosegError

__all__ = ["PacsError"]


class PacsError(PneumosegError):
    """A PACS or DICOMweb server that cannot be reached or refuses a request."""
