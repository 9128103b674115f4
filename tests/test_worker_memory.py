"""Malloc settings of sample-building processes: applied here and inherited by started processes."""

import os
import subprocess
import sys

from flow3r_jax.data.worker_memory import MALLOC_ENV, keep_freed_memory


def test_thresholds_apply_here_and_reach_child_processes():
    assert keep_freed_memory()  # glibc (Linux): mallopt accepted both settings
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['MALLOC_MMAP_THRESHOLD_'], "
                            "os.environ['MALLOC_TRIM_THRESHOLD_'])"], capture_output=True, text=True, check=True)
    assert child.stdout.split() == [os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")]
    assert all(os.environ[k] == v for k, v in MALLOC_ENV.items())
