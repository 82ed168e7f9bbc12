"""Inference: the one prediction path (``predictor``), the ONNX backend (``onnx``) and archive-scale
prediction (``archive``: streamed inputs, Lightning DDP prediction, resumable part files, manifest)."""
