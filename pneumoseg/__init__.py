"""pneumoseg: pneumothorax segmentation on chest radiographs (SIIM-ACR)."""

__version__ = "0.1.0"
