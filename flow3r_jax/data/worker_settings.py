"""Settings of the processes that build samples: glibc malloc thresholds and single-threaded OpenCV.

Malloc: a sample at training size holds tens of MB of fresh arrays. With glibc's defaults every array
above the dynamic mmap threshold is a new mapping whose pages fault in on first touch and is returned to
the system when freed, so each sample pays for its memory again (measured at the large recipe's shape:
a sample took 60 ms of CPU instead of 98 ms with the settings below). Raising the mmap and trim
thresholds to MALLOC_THRESHOLD_BYTES keeps such blocks in the heap for reuse, at the cost of up to that
much freed memory held per process.

OpenCV: its resize splits each call over a thread pool, which on frames of a few hundred thousand
pixels costs more CPU in hand-offs than it saves (8 frames 392 x 518 -> 378 x 504: 3.6 ms of CPU with
the default pool, 2.7 ms with one thread, on the 2-core development machine). Parallelism comes from
Grain's workers and read threads instead, so every sample-building process runs OpenCV on one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import cv2

MALLOC_THRESHOLD_BYTES = 256 << 20
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MALLOC_THRESHOLD_BYTES),
              "MALLOC_TRIM_THRESHOLD_": str(MALLOC_THRESHOLD_BYTES),
              "OPENCV_FOR_THREADS_NUM": "1"}
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def apply_worker_settings() -> bool:
    """Apply the settings to this process (mallopt, cv2.setNumThreads) and, through WORKER_ENV (values
    already set win), to the processes it starts later, e.g. Grain workers. Returns False where glibc is
    not the allocator (the OpenCV setting applies regardless)."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    cv2.setNumThreads(int(os.environ["OPENCV_FOR_THREADS_NUM"]))
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(os.environ["MALLOC_MMAP_THRESHOLD_"])) and
                mallopt(_M_TRIM_THRESHOLD, int(os.environ["MALLOC_TRIM_THRESHOLD_"])))
