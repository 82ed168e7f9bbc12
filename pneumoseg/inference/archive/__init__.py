"""Archive-scale inference: streamed inputs, Lightning DDP prediction, resumable part files, manifest."""

from pneumoseg.inference.archive.distributed import merge_outputs, predict_archive
from pneumoseg.inference.archive.sources import first_input, folder_source, iter_folder, iter_list, list_source

__all__ = ["first_input", "folder_source", "iter_folder", "iter_list", "list_source", "merge_outputs",
           "predict_archive"]
