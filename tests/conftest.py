"""Test setup: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from gpt_jax import paths  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    return paths.resolve_data_dir()
