"""Helpers shared by the tests, each written once: torch threads, DICOM files, caches, headless Chromium.

Import them as ``tests.helpers.<module>``; the fixtures among them reach the tests through conftest.py.
"""
