"""Inference: inputs (``inputs``), the one prediction path (``predictor``), the prediction folder
(``folder``), the DICOM outputs (``outputs``), the ONNX backend (``onnx``) and archive-scale
prediction (``archive``: streamed inputs, Lightning DDP prediction, resumable part files, manifest)."""
