"""Loaders for the eight evaluation benchmarks, each returning `Sequence`s.

`BENCHMARKS[name]` gives the benchmark's kind ("dynamic": trajectory metrics RPE/ATE; "static":
pairwise metrics RRA/RTA/AUC), the default folder under --data-root, and the loader. Each loader's
module docstring documents the on-disk layout and the frame-sampling protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Iterator

from flow3r_jax.evaluation.benchmarks import bonn, co3d, nrgbd, scannet, seven_scenes, sintel, video_clips
from flow3r_jax.evaluation.benchmarks.sequence import BenchmarkDataError, BenchmarkDataMissing, Sequence


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str                      # "dynamic" or "static"
    folder: str                    # default folder name under the data root
    loader: Callable[..., Iterator[Sequence]]

    def sequences(self, data_root: str | pathlib.Path, **options) -> Iterator[Sequence]:
        return self.loader(pathlib.Path(data_root) / self.folder, **options)


BENCHMARKS = {b.name: b for b in (
    Benchmark("kinetics700", "dynamic", "kinetics700", functools.partial(video_clips.load, benchmark="kinetics700")),
    Benchmark("epic_kitchens", "dynamic", "epic_kitchens",
              functools.partial(video_clips.load, benchmark="epic_kitchens")),
    Benchmark(sintel.NAME, sintel.KIND, "sintel", sintel.load),
    Benchmark(bonn.NAME, bonn.KIND, "bonn", bonn.load),
    Benchmark(co3d.NAME, co3d.KIND, "co3dv2", co3d.load),
    Benchmark(scannet.NAME, scannet.KIND, "scannet", scannet.load),
    Benchmark(nrgbd.NAME, nrgbd.KIND, "nrgbd", nrgbd.load),
    Benchmark(seven_scenes.NAME, seven_scenes.KIND, "7scenes", seven_scenes.load),
)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "BenchmarkDataMissing", "Sequence", "get_benchmark"]
