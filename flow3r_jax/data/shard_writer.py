"""Writing ArrayRecord clip shards and their manifest.

Layout of a dataset directory::

    <prefix>-NNNNN-of-MMMMM.array_record        one clip record per entry (flow3r_jax.data.records, version
                                               RECORD_VERSION; other versions are refused),
                                               written with options WRITER_OPTIONS: one record
                                               per chunk (random access), no chunk compression
                                               (the blobs are compressed already; ArrayRecord's
                                               default chunk compression saved 2.5% of a 7 MB
                                               record and cost 1 ms more per read)
    <prefix>-NNNNN-of-MMMMM.array_record.json   shard entry: file, num_records, sha256, sources,
                                               failures (inputs that produced nothing, and why), build,
                                               record_version (shards of another version are rebuilt)
    manifest.json                              written last: record_version, prefix, num_shards,
                                               total_records, build, num_failures, failures, sources,
                                               shards (file, num_records, sha256 of each)

Input item k (a synthetic clip index, a video file, a scene) always goes to shard k mod M, so a rerun
rebuilds exactly the shards whose entry is missing or does not match; finished shards are skipped.
Every file is written under a temporary name and renamed into place, so a crash leaves no half-written
shard, entry or manifest. The manifest exists only once every shard is finished.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterable

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from flow3r_jax.data.records import RECORD_VERSION, RecordError, record_version
from flow3r_jax.files import atomic_path, atomic_write

MANIFEST_NAME = "manifest.json"
WRITER_OPTIONS = "group_size:1,uncompressed"


def shard_filename(prefix: str, index: int, num_shards: int) -> str:
    """`<prefix>-NNNNN-of-MMMMM.array_record`."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.array_record"


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(out_dir, prefix: str, index: int, num_shards: int, records: Iterable[tuple[str, bytes]],
                build: dict, failures: list[dict] | None = None) -> dict:
    """Write (source_id, record bytes) pairs as shard `index` plus its entry file; returns the entry.
    `failures` ({"source", "error"} of inputs of this shard that produced nothing) go into the entry.
    Records must be of the current RECORD_VERSION (`records.encode_clip`); RecordError otherwise."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / shard_filename(prefix, index, num_shards)
    sources = []
    with atomic_path(path) as tmp:
        writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
        try:
            for source_id, record in records:
                version = record_version(record, source_id)
                if version != RECORD_VERSION:
                    raise RecordError(f"{source_id}: record version {version}; shards are written in "
                                      f"version {RECORD_VERSION} only")
                writer.write(record)
                sources.append(source_id)
        finally:
            writer.close()
    entry = {"file": path.name, "num_records": len(sources), "sha256": file_sha256(path),
             "sources": sources, "failures": failures or [], "build": build, "record_version": RECORD_VERSION}
    atomic_write(path.with_name(path.name + ".json"), json.dumps(entry, indent=1))
    return entry


def finished_shard(out_dir, prefix: str, index: int, num_shards: int, build: dict) -> dict | None:
    """The entry of shard `index` if its file and entry exist, match each other, `build` and the current
    RECORD_VERSION; else None."""
    path = pathlib.Path(out_dir) / shard_filename(prefix, index, num_shards)
    entry_path = path.with_name(path.name + ".json")
    if not (path.exists() and entry_path.exists()):
        return None
    entry = json.loads(entry_path.read_text())
    if (entry.get("build") != build or entry.get("record_version") != RECORD_VERSION
            or entry.get("sha256") != file_sha256(path)):
        return None
    return entry


def write_manifest(out_dir, prefix: str, entries: list[dict], build: dict) -> dict:
    """Write manifest.json for the finished shards `entries` (one per shard, in shard order)."""
    failures = [f for e in entries for f in e["failures"]]
    manifest = {"record_version": RECORD_VERSION, "prefix": prefix, "num_shards": len(entries),
                "total_records": sum(e["num_records"] for e in entries), "build": build,
                "num_failures": len(failures), "failures": failures,
                "sources": [s for e in entries for s in e["sources"]],
                "shards": [{k: e[k] for k in ("file", "num_records", "sha256")} for e in entries]}
    atomic_write(pathlib.Path(out_dir) / MANIFEST_NAME, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(out_dir) -> dict | None:
    """manifest.json of `out_dir`, or None when there is none."""
    path = pathlib.Path(out_dir) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else None


def complete_manifest(out_dir, build: dict) -> dict | None:
    """The manifest if it was written for `build` and every shard it lists exists with its checksum."""
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("build") != build or manifest.get("record_version") != RECORD_VERSION:
        return None
    for shard in manifest["shards"]:
        path = pathlib.Path(out_dir) / shard["file"]
        if not path.exists() or file_sha256(path) != shard["sha256"]:
            return None
    return manifest


def manifest_shard_files(out_dir) -> list[pathlib.Path]:
    """Shard files listed in the manifest of `out_dir`, in shard order."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{pathlib.Path(out_dir) / MANIFEST_NAME} not found")
    return [pathlib.Path(out_dir) / s["file"] for s in manifest["shards"]]


def input_seed(seed: int, index: int) -> int:
    """Seed of input `index` (synthetic clip, video) of a dataset built with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
