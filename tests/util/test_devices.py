"""The one device parser (``--device`` of every command, ``ServiceSettings.device``)."""

from __future__ import annotations

import pytest

from pneumoseg.errors import ConfigError
from pneumoseg.util.devices import accelerator_of, parse_device


@pytest.mark.parametrize(("text", "device", "accelerator"), [
    (None, None, "auto"), ("cpu", "cpu", "cpu"), ("CUDA", "cuda", "gpu"), (" cuda:1 ", "cuda:1", "gpu"),
    ("mps", "mps", "mps")])
def test_valid_devices(text: str | None, device: str | None, accelerator: str) -> None:
    assert parse_device(text) == device
    assert accelerator_of(device) == accelerator


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cuda:-1", "tpu", "", "cpu:0 "])
def test_invalid_device_is_one_line_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--device .* unknown \(valid: cpu, cuda, cuda:N, mps\)$"):
        parse_device(text)
