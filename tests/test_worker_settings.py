"""Settings of sample-building processes: applied here and inherited by started processes."""

import os
import subprocess
import sys

import cv2

from flow3r_jax.data.worker_settings import WORKER_ENV, apply_worker_settings


def test_settings_apply_here_and_reach_child_processes():
    assert apply_worker_settings()  # glibc (Linux): mallopt accepted both settings
    assert cv2.getNumThreads() == int(os.environ["OPENCV_FOR_THREADS_NUM"])
    child = subprocess.run([sys.executable, "-c", "import os, cv2; print(os.environ['MALLOC_MMAP_THRESHOLD_'], "
                            "os.environ['MALLOC_TRIM_THRESHOLD_'], cv2.getNumThreads())"],
                           capture_output=True, text=True, check=True)
    keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OPENCV_FOR_THREADS_NUM")
    assert child.stdout.split() == [os.environ[k] for k in keys]
    assert all(os.environ[k] == v for k, v in WORKER_ENV.items())
