"""Test session setup: 8 simulated CPU devices, full float32 matmul precision, fast compilation.

The tests run tiny models for a few steps, so compiling dominates their time: XLA's CPU backend is
asked for unoptimised code (LLVM -O0, no expensive passes), which compiles about 3-5x faster. The
same float32 operations run; reductions may sum in another order, so means over many elements differ
in the last digits (tolerances say so). Subprocesses started by tests inherit XLA_FLAGS.
"""

import os
import pathlib
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
    " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the test process and the subprocesses it starts (the
# launcher runs of the resume tests compile the same programs again).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "flow3r_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

ROOT = pathlib.Path(__file__).resolve().parents[1]

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED = ROOT.parent / "shared"
TINY_GOLDEN = SHARED / "reference" / "flow3r_tiny"


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.exists():
        pytest.skip(f"reference data not found at {SHARED}")
    return SHARED
