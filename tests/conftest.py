"""Test-wide setup that must happen before any test module imports jax."""

import os

# Eight CPU devices, so mesh tests can build (8, 1), (4, 2) and (2, 4) meshes on one host.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()

import gin  # noqa: E402  (after XLA_FLAGS: gin does not import jax)
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """gin bindings are process-global: a test that runs the trainer must not leak its
    bindings (e.g. loss settings) into the defaults of configurables another test builds."""
    gin.clear_config()
    yield
    gin.clear_config()
