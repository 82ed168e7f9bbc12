"""File formats <-> arrays (no torch): the challenge RLE, PNG images and masks, overlays, DICOM (``io.dicom``)."""
