"""Test-wide setup that must happen before any test module imports jax."""

import os

# Eight CPU devices, so mesh tests can build (8, 1), (4, 2) and (2, 4) meshes on one host.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()
