"""The seed notebook's / challenge's reference helpers, verbatim in behaviour: the naive baselines
that the benchmarks compare against (shared so that every benchmark times the same code)."""

from __future__ import annotations

import numpy as np


def rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The seed's decoder, as written there (float64, Python loop); the caller transposes."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts = array[0::2]
    lengths = array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def mask2rle(img: np.ndarray, width: int, height: int) -> str:
    """The challenge's mask_functions.mask2rle (as the seed and the winner called it, on ``mask.T``
    with 255 for foreground): a Python loop over every pixel, column-major, relative starts."""
    rle = []
    last_color = 0
    current_pixel = 0
    run_start = -1
    run_length = 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start = current_pixel
                    run_length = 1
                else:
                    rle.append(str(run_start))
                    rle.append(str(run_length))
                    run_start = -1
                    run_length = 0
                    current_pixel = 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(rle)
