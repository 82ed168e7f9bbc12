"""Archive-scale inference: streamed inputs, one process without an engine or Lightning DDP, resumable part files, manifest."""

from pneumoseg.inference.archive.loop import merge_outputs, predict_archive
from pneumoseg.inference.archive.sources import (
    first_input,
    folder_source,
    input_source,
    iter_folder,
    iter_list,
    list_source,
)

__all__ = ["first_input", "folder_source", "input_source", "iter_folder", "iter_list", "list_source",
           "merge_outputs", "predict_archive"]
