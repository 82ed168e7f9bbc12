"""Explore a DICOM + RLE dataset or a PNG set: statistics, a metadata table, a sample grid, figures.

``explore(dicom_dir, rle_csv, out_dir)`` reads every DICOM header (``read_dicom_meta``: fast, no
decoding) and checks that pixel data is there, joins it with the annotation CSV by ImageId (the
same rule as prepare: the SOPInstanceUID, else the file stem; ``layouts.dicom_image_id``; the
``matched_by`` column says which) and writes, atomically:

* ``OUT/summary.json``       the dictionary returned (counts, rates, distributions, warnings, failures);
* ``OUT/metadata.csv``       one row per usable DICOM: header fields + has_pneumothorax (0/1),
  n_annotations (non-empty RLE rows), n_rle_rows, mask_area_px (union mask at Rows x Columns),
  pixel_spacing_mm (sqrt(row * column) of ``dicom.pixel_spacing_mm``; empty when the header has
  none), pixel_spacing_source (the attribute it came from), mask_area_mm2 (px * row * column
  spacing), file, matched_by;
* ``OUT/samples.png``        up to ``n_samples`` images, positives first, masks overlaid in red;
* ``OUT/distributions.png``  age, sex, view position, regions per positive, mask area, rate by view.

Like prepare, a bad item (unreadable file, no pixel data, invalid SOPInstanceUID, undecodable RLE
row, an id already taken by another file, a sample image that does not decode) is listed in
``summary["failures"]`` (one line naming the file or CSV row) and left out of every statistic;
the CLI then exits 2. Images without an annotation row count as "no pneumothorax" (one warning
says how many); annotation ImageIds without a DICOM are counted and reported. Without an annotation
CSV (``rle_csv=None``: an unlabelled folder) the statistics cover the headers only:
``summary["labelled"]`` is False, every label statistic is None (or empty), metadata.csv's label
columns are empty and the figures draw only header panels; nothing is counted as "no
pneumothorax", since unlabelled is not negative. Mask areas are summarised in mm²
when every positive has a pixel spacing, else in px (``summary["mask_area_unit"]``; a warning
says how many positives lack one).

``explore_png(png_dir, out_dir)`` does the same for the PNG layout that ``prepare --png-dir``
reads: ``png_dir/images/<name>.(png|jpg|jpeg)`` with optional ``png_dir/masks/<name>.png``
(0/255; no mask = no pneumothorax; no masks/ folder at all = unlabelled, as above: image sizes
only). image_id = the file stem (``paths.safe_name``);
metadata.csv holds ``PNG_COLUMNS`` (n_regions: 8-connected regions of the mask, prepare's
rule). There is no DICOM metadata (no patient, age, sex, view, pixel spacing): label
statistics, image sizes and areas in px only, and the summary says so. An unreadable image or
mask, a mask whose size differs from its image's, an unsafe or duplicate name is a failure.

The modules, data flowing one way: ``scan`` (a folder -> the table), ``summary`` (the table ->
statistics and warning lines), ``figures`` (the table + the summary -> PNG figures) and ``write``
(``explore`` / ``explore_png``: the three in turn, into OUT/). ``summary`` and ``figures`` only
read ``scan``'s tables; ``write`` imports all three and nothing here imports ``write``.
"""

from __future__ import annotations

from pneumoseg.data.explore.figures import plot_distributions, plot_samples
from pneumoseg.data.explore.scan import METADATA_COLUMNS, PNG_COLUMNS, Scan, scan_dataset, scan_png
from pneumoseg.data.explore.summary import summarize, summarize_png
from pneumoseg.data.explore.write import explore, explore_png
from pneumoseg.io.layouts import find_dicoms

__all__ = [
    "METADATA_COLUMNS",
    "PNG_COLUMNS",
    "Scan",
    "explore",
    "explore_png",
    "find_dicoms",
    "plot_distributions",
    "plot_samples",
    "scan_dataset",
    "scan_png",
    "summarize",
    "summarize_png",
]
