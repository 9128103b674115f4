"""What a training run prints: one progress line per logging step, library chatter kept out of the way.

Progress line (absl INFO, every config.logging.every_steps steps):

    step 120/300 (40%) | 0.120 s/step | MFU 31.2% | ETA 0:00:21 | loss 0.3121 | point 0.2204 | ...

By default INFO records of the libraries underneath (Orbax's per-save lines, Grain, JAX, TensorFlow)
are dropped; warnings and errors always show. `--verbosity=1` (absl's flag) shows everything.
"""

from __future__ import annotations

import datetime
import logging

from absl import logging as absl_logging

LIBRARY_PACKAGES = ("orbax", "grain", "jax", "etils", "tensorflow", "clu", "flax")
MAIN_LOSS_TERMS = ("point", "normal", "camera", "conf", "flow")


class _LibraryInfoFilter(logging.Filter):
    """Drops records at INFO and below that were emitted from inside a library package."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        path = record.pathname.replace("\\", "/")
        return not any(f"/{package}/" in path for package in LIBRARY_PACKAGES)


_FILTER = _LibraryInfoFilter()


def quiet_library_logs(quiet: bool = True) -> None:
    """Turns the library INFO filter on (quiet=True) or off on absl's log handler."""
    handler = absl_logging.get_absl_handler()
    if quiet:
        handler.addFilter(_FILTER)
    else:
        handler.removeFilter(_FILTER)


def progress_line(step: int, total_steps: int, summary: dict[str, float]) -> str:
    """The progress line for `step` from a ScalarWindow summary (perf/step_time_s, perf/mfu if known,
    loss, loss/<term>)."""
    step_time = summary["perf/step_time_s"]
    eta = datetime.timedelta(seconds=round(step_time * (total_steps - step)))
    parts = [f"step {step}/{total_steps} ({100 * step / total_steps:.0f}%)", f"{step_time:.3g} s/step"]
    if "perf/mfu" in summary:
        parts.append(f"MFU {100 * summary['perf/mfu']:.1f}%")
    parts += [f"ETA {eta}", f"loss {summary['loss']:.4f}"]
    parts += [f"{term} {summary[f'loss/{term}']:.4f}" for term in MAIN_LOSS_TERMS if f"loss/{term}" in summary]
    if summary.get("skipped_steps"):
        parts.append(f"skipped {summary['skipped_steps']}")
    return " | ".join(parts)
