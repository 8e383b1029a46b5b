"""Test setup: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the session, its subprocesses included (stages run as
# `python -m gpt_jax.main`, the multi-process test): the same programs are compiled again and again
# across processes. Measured: test_train_loop.py + test_multiprocess.py 262 s -> 196 s from an
# empty cache. Removed at exit, so no run ever reads another session's compilations.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="gpt_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402

from gpt_jax import paths  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    return paths.resolve_data_dir()
