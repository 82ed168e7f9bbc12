"""Every test module here runs with one torch thread (CPU forward/backward passes on two shared cores: faster, reproducible)."""

from tests.helpers.threads import one_thread_per_module  # noqa: F401  (autouse)
