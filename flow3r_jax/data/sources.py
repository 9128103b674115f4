"""Data sources of a run: config entries -> shard files, mixing weight and labels.

A source entry (`data.sources`, `data.eval_sources`) is a mapping with
  path      a shard folder (every *.array_record inside) or a glob, or
  synthetic "train" / "eval": a split of the embedded synthetic dataset under data.cache_dir
  weight    mixing weight of the training stream (default 1.0; ignored for evaluation)
  labeled   whether the source provides 3D labels (default True)
  name      for logs (default "source<k>:<path>")
"""

from __future__ import annotations

import dataclasses
import os

from flow3r_jax.data.shard_reader import find_shards
from flow3r_jax.data.synthetic_dataset import synthetic_split_dir

ENTRY_KEYS = ("path", "synthetic", "weight", "labeled", "name")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One resolved data source: shard files, mixing weight, whether it provides 3D labels."""

    name: str
    paths: tuple[str, ...]
    weight: float
    labeled: bool


def resolve_sources(data_cfg, entries) -> list[SourceSpec]:
    """Source entries (module docstring) -> SourceSpecs with their shard files.

    Raises ValueError for an entry with unknown keys or neither/both of path and synthetic, and
    FileNotFoundError for a synthetic split that is not built or a path without shards.
    """
    specs = []
    for k, entry in enumerate(entries):
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown or bool(entry.get("path")) == bool(entry.get("synthetic")):
            raise ValueError(f"data source {k} {dict(entry)!r}: expected exactly one of 'path' and 'synthetic' "
                             f"and keys among {ENTRY_KEYS}" + (f"; unknown {unknown}" if unknown else ""))
        if entry.get("synthetic"):
            path = synthetic_split_dir(data_cfg, entry["synthetic"])
            if not os.path.isdir(path):
                raise FileNotFoundError(f"synthetic split {entry['synthetic']!r} not built at {path}; call "
                                        "ensure_synthetic_dataset(data_cfg) first")
        else:
            path = entry["path"]
        specs.append(SourceSpec(name=entry.get("name") or f"source{k}:{path}", paths=tuple(find_shards(path)),
                                weight=float(entry.get("weight", 1.0)), labeled=bool(entry.get("labeled", True))))
    return specs
