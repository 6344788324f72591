"""Test setup: a fake 8-device CPU mesh, so sharding code really runs, and compilation kept cheap.

Everything here must happen before JAX initialises its backends, hence at import. The environment variables
are also inherited by the tests' subprocesses (the CLI, resume, multi-host and study tests).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The test programs are tiny, so compiling dominates the suite: skip LLVM's optimisation passes on the CPU
# backend (about a third less time per compile; semantics unchanged, and every test compares runs made under
# the same flags or with tolerances). A developer's own XLA_FLAGS still win.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# One persistent compilation cache for the session, shared with the subprocesses that compile the same tiny
# programs again (each a fresh interpreter). Ours alone: a new temporary folder, removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="tipjax-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
