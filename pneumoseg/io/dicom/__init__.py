"""DICOM: the hardened reader (``read``) and the objects pneumoseg writes (``seg``, ``sr``, ``sc``)."""
