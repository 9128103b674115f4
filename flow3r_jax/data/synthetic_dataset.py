"""The embedded default dataset: procedural synthetic clips (flow3r_jax/data/synthetic.py) as shards.

`build_synthetic_shards` writes N clips into M ArrayRecord shards with a manifest (shard_writer.py);
`ensure_synthetic_dataset` builds every synthetic split a data config names ("train", "eval") into
`data.cache_dir/<split>-<hash of the build settings>`, once: a changed setting builds a new split, an
interrupted or concurrent build never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pathlib
from typing import Any

from flow3r_jax.data.buckets import bucket_shapes
from flow3r_jax.data.records import encode_clip
from flow3r_jax.data.shard_writer import complete_manifest, finished_shard, input_seed, write_manifest, write_shard
from flow3r_jax.data.synthetic import synthetic_record
from flow3r_jax.files import atomic_directory

SPLITS = ("train", "eval")


def build_synthetic_shards(out_dir, num_clips: int, num_shards: int, seed: int, height: int, width: int,
                           frames_per_clip: int, pairs_per_clip: int, dynamic: bool, *,
                           image_format: str = "jpeg", num_workers: int = 1, prefix: str = "synthetic") -> dict:
    """Build (or find already built) `num_clips` synthetic clips in `num_shards` shards; returns the manifest.

    Clip k uses seed `input_seed(seed, k)` and goes to shard k mod num_shards, so the result does
    not depend on `num_workers`. Idempotent: a complete manifest for the same arguments means nothing to
    do; otherwise only shards without a matching entry are (re)built.
    """
    if num_clips < num_shards:
        raise ValueError(f"num_clips ({num_clips}) must be >= num_shards ({num_shards})")
    build = {"kind": "synthetic", "num_clips": num_clips, "seed": seed, "height": height, "width": width,
             "frames_per_clip": frames_per_clip, "pairs_per_clip": pairs_per_clip, "dynamic": dynamic,
             "image_format": image_format}
    manifest = complete_manifest(out_dir, build)
    if manifest is not None:
        return manifest
    jobs = [(str(out_dir), prefix, index, num_shards, build) for index in range(num_shards)]
    if num_workers > 1:
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            entries = pool.starmap(_build_synthetic_shard, jobs)
    else:
        entries = [_build_synthetic_shard(*job) for job in jobs]
    return write_manifest(out_dir, prefix, entries, build)


def _build_synthetic_shard(out_dir: str, prefix: str, index: int, num_shards: int, build: dict) -> dict:
    entry = finished_shard(out_dir, prefix, index, num_shards, build)
    if entry is not None:
        return entry

    def records():
        for k in range(index, build["num_clips"], num_shards):
            clip = synthetic_record(input_seed(build["seed"], k), build["height"], build["width"],
                                    build["frames_per_clip"], build["pairs_per_clip"], build["dynamic"],
                                    build["image_format"])
            yield clip.source_id, encode_clip(clip)

    return write_shard(out_dir, prefix, index, num_shards, records(), build)


def synthetic_split_settings(data_cfg, split: str) -> dict[str, Any]:
    """Arguments of `build_synthetic_shards` for split "train" or "eval" of a data config.

    Rendered size: data.synthetic_height/width, else data.height/width; frames and pairs per clip:
    data.synthetic_frames_per_clip (else max(4, num_frames, the buckets' frame counts)) and
    synthetic_pairs_per_clip (else 2 * pairs_per_sample); the eval split uses synthetic_seed + 1.
    """
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    num_clips = int(data_cfg.num_train_clips if split == "train" else data_cfg.num_eval_clips)
    return {"num_clips": num_clips,
            "num_shards": min(num_clips, int(data_cfg.synthetic_num_shards)),
            "seed": int(data_cfg.synthetic_seed) + (split == "eval"),
            "height": int(data_cfg.synthetic_height or data_cfg.height),
            "width": int(data_cfg.synthetic_width or data_cfg.width),
            "frames_per_clip": int(data_cfg.synthetic_frames_per_clip or max(
                4, data_cfg.num_frames, *(n for n, _, _ in bucket_shapes(data_cfg)))),
            "pairs_per_clip": int(data_cfg.synthetic_pairs_per_clip or 2 * data_cfg.pairs_per_sample),
            "dynamic": bool(data_cfg.synthetic_dynamic)}


def synthetic_split_dir(data_cfg, split: str) -> str:
    """data.cache_dir/<split>-<hash of the split's build settings>."""
    settings = synthetic_split_settings(data_cfg, split)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    if not data_cfg.cache_dir:
        raise ValueError("data.cache_dir must be set to use the synthetic dataset")
    return os.path.join(os.path.expanduser(data_cfg.cache_dir), f"{split}-{digest}")


def synthetic_splits(data_cfg) -> list[str]:
    """The synthetic splits the training and evaluation sources of a data config use, sorted."""
    entries = list(data_cfg.sources) + list(data_cfg.eval_sources)
    return sorted({entry["synthetic"] for entry in entries if entry.get("synthetic")})


def ensure_synthetic_dataset(data_cfg) -> list[str]:
    """Builds every synthetic split the config's sources use, if not built yet; returns their folders."""
    out = []
    for split in synthetic_splits(data_cfg):
        final = synthetic_split_dir(data_cfg, split)
        if not pathlib.Path(final).is_dir():
            with atomic_directory(final) as tmp:
                build_synthetic_shards(tmp, **synthetic_split_settings(data_cfg, split))
        out.append(final)
    return out
