"""Every test module here runs with one torch thread (CPU inference, ONNX export on two shared cores: faster, reproducible)."""

from tests.helpers.threads import one_thread_per_module  # noqa: F401  (autouse)
