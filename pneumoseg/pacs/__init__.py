"""pneumoseg next to a PACS: a DICOM node (``listen``) and a DICOMweb client (``dicomweb``).

* ``outputs``  which instances are predicted (CR / DX images, and Secondary Captures whose
  Modality is CR / DX / DR, as the challenge's files are) and the SEG / SR / SC made for each;
* ``queue``    the listener's on-disk queue: one state file per instance, received -> predicted -> sent;
* ``listen``   the pynetdicom node: C-ECHO, C-STORE queued on disk before acknowledging, a worker
  that predicts and C-STOREs the results to the destination;
* ``dicomweb`` WADO-RS fetch, predict, STOW-RS store (dicomweb-client).

Nothing here is imported by ``pneumoseg`` itself: pynetdicom and dicomweb-client load only when used.
"""

from __future__ import annotations

__all__: list[str] = []
