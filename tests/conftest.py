"""Test setup: a fake 8-device CPU mesh, so sharding code really runs.

The device count must be set before JAX initialises its backends, hence here, at import.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
