"""Utilities with no pipeline knowledge: atomic writes, safe paths, progress bars."""
