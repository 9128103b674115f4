"""Grain input pipeline on real synthetic ArrayRecord shards: contract, geometry, determinism, resume,
per-host sharding, corrupt input and source mixing."""

import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from support import data_config, reprojection_errors, with_values

from flow3r_jax.data import pipeline
from flow3r_jax.data.buckets import train_buckets
from flow3r_jax.data.records import RecordError, decode_clip, encode_clip
from flow3r_jax.data.sources import resolve_sources
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset

N, S, H, W = 3, 2, 28, 42
NUM_TRAIN = 12


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    cfg = data_config(cache_dir=str(tmp_path_factory.mktemp("synthetic")), num_frames=N, pairs_per_sample=S,
                      height=H, width=W, num_train_clips=NUM_TRAIN, num_eval_clips=5, synthetic_num_shards=3,
                      synthetic_height=42, synthetic_width=56, synthetic_frames_per_clip=4,
                      synthetic_pairs_per_clip=5, crop_scale_range=(0.6, 1.0))
    ensure_synthetic_dataset(cfg)
    return cfg


def _iterator(cfg, **kwargs):
    """The training iterator of `cfg` with its buckets at a global batch of 4."""
    args = dict(seed=0, process_index=0, process_count=1) | kwargs
    return pipeline.make_train_iterator(cfg, buckets=train_buckets(cfg, global_batch_size=4), **args)


def _batches(cfg, n, **kwargs):
    iterator = _iterator(cfg, **kwargs)
    out = [next(iterator) for _ in range(n)]
    iterator.close()
    return out


def _assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_batch_matches_the_batch_contract(data_cfg):
    batch = _batches(data_cfg, 1)[0]
    expected = {"images": ((4, N, H, W, 3), np.float32), "depth": ((4, N, H, W), np.float32),
                "valid_mask": ((4, N, H, W), np.bool_), "points": ((4, N, H, W, 3), np.float32),
                "camera_poses": ((4, N, 4, 4), np.float32), "intrinsics": ((4, N, 3, 3), np.float32),
                "is_labeled": ((4,), np.bool_), "normal_ok": ((4,), np.bool_),
                "pair_indices": ((4, S, 2), np.int32), "flow_coords": ((4, S, H, W, 2), np.float32),
                "flow_mask": ((4, S, H, W), np.float32)}
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
        assert np.all(np.isfinite(batch[key])), key
    assert batch["images"].min() >= 0.0 and batch["images"].max() <= 1.0 and batch["images"].std() > 0.01
    assert batch["is_labeled"].all() and batch["valid_mask"].mean() > 0.9
    assert np.all(batch["depth"][~batch["valid_mask"]] == 0)
    assert batch["pair_indices"].min() >= 0 and batch["pair_indices"].max() < N
    assert 0.0 <= batch["flow_mask"].min() and batch["flow_mask"].max() <= 1.0 and batch["flow_mask"].mean() > 0.2


def test_cropped_labels_reproject_onto_cropped_flow(data_cfg):
    """Static scenes: transformed depth + intrinsics + poses, and transformed world points, reproduce the
    transformed flow targets on co-visible pixels. Points come from the same source pixel as the flow
    (tolerance 0.05 px: float16 storage of flow); unprojecting depth through the output pixel centre is
    off by at most half a source pixel (tolerance: median 0.45 px, every pixel 1.5 px)."""
    cfg = with_values(data_cfg, resolutions=[(28, 42), (42, 28), (28, 28)])
    batches = _batches(cfg, 3)
    assert len({b["images"].shape for b in batches}) >= 2
    depth_errors, point_errors = reprojection_errors(batches)
    assert depth_errors.size > 2000
    assert point_errors.max() < 0.05
    assert np.median(depth_errors) < 0.45 and depth_errors.max() < 1.5


def test_same_seed_gives_identical_batches_for_any_worker_count(data_cfg):
    reference = _batches(data_cfg, 3, seed=5)
    _assert_same(reference, _batches(with_values(data_cfg, worker_count=2), 3, seed=5))
    other = _batches(data_cfg, 1, seed=6)[0]
    assert not np.array_equal(other["images"], reference[0]["images"])


def test_resume_from_iterator_state_and_orbax_checkpoint(data_cfg, tmp_path):
    uninterrupted = _batches(data_cfg, 5)
    iterator = _iterator(data_cfg)
    _assert_same(uninterrupted[:2], [next(iterator), next(iterator)])
    state = iterator.get_state()
    manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data_iter",))
    manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    next(iterator)
    iterator.close()

    restored = _iterator(data_cfg)
    manager.restore(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
    _assert_same(uninterrupted[2:], [next(restored) for _ in range(3)])
    restored.set_state(state)
    _assert_same(uninterrupted[2:3], [next(restored)])
    restored.close()
    manager.close()


def test_hosts_cover_every_record_exactly_once(data_cfg):
    per_host = [pipeline.host_record_stream(data_cfg, seed=3, process_index=p, process_count=3) for p in range(3)]
    first_epoch = [key for stream in per_host for key in (stream[k] for k in range(NUM_TRAIN // 3))]
    assert sorted(first_epoch) == [(0, r) for r in range(NUM_TRAIN)]
    in_order = [(0, r) for r in range(NUM_TRAIN)]
    assert first_epoch != in_order  # globally shuffled

    whole = pipeline.make_eval_dataset(data_cfg, batch_size=2)
    all_images = np.concatenate([b["images"] for b in whole])
    host_images = [np.concatenate([b["images"] for b in pipeline.make_eval_dataset(
        data_cfg, batch_size=2, process_index=p, process_count=3)]) for p in range(3)]
    assert sum(len(x) for x in host_images) == len(all_images) == 5
    for p, images in enumerate(host_images):
        np.testing.assert_array_equal(images, all_images[p::3])
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in whole]), all_images)  # deterministic


def _write_shard(path, records):
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()


def _train_records(cfg):
    shard = sorted(resolve_sources(cfg, [{"synthetic": "train"}])[0].paths)[0]
    reader = ArrayRecordReader(shard)
    records = [reader.read([k])[0] for k in range(reader.num_records())]
    reader.close()
    return records


def test_corrupt_record_raises_with_file_and_index_or_is_counted(data_cfg, tmp_path):
    records = _train_records(data_cfg)
    flipped = bytearray(records[1])
    flipped[len(flipped) // 2] ^= 0xFF
    bad_pose = decode_clip(records[2])
    bad_pose.camera_poses[0, 0, 3] = np.nan
    shard = tmp_path / "bad" / "bad-00000-of-00001.array_record"
    shard.parent.mkdir()
    _write_shard(shard, [records[0], bytes(flipped), encode_clip(bad_pose), records[3]])
    cfg = with_values(data_cfg, sources=[{"path": str(shard.parent)}], crop_scale_range=(1.0, 1.0))
    corrupt = rf"{shard}#(1: (\w+\[\d+\]: )?checksum|2: non-finite values in camera_poses)"
    with pytest.raises(RecordError, match=corrupt):
        _batches(cfg, 2)

    counter = pipeline.CorruptRecordCounter()
    iterator = _iterator(with_values(cfg, skip_corrupt=True), corrupt_counter=counter)
    batches = [next(iterator) for _ in range(2)]
    iterator.close()
    assert counter.count >= 3  # 8 samples over a 4-record epoch: each bad record is met at least twice
    assert all(np.all(np.isfinite(b["camera_poses"])) for b in batches)

    truncated = tmp_path / "truncated" / "t-00000-of-00001.array_record"
    truncated.parent.mkdir()
    _write_shard(truncated, records)
    truncated.write_bytes(truncated.read_bytes()[: os.path.getsize(truncated) // 2])
    with pytest.raises(ValueError, match=str(truncated)):
        _iterator(with_values(cfg, sources=[{"path": str(truncated)}]))


def test_mixing_follows_the_weights_and_unlabeled_sources_have_no_labels(data_cfg):
    train = {"synthetic": "train"}
    cfg = with_values(data_cfg, sources=[train | {"weight": 3.0}, train | {"weight": 1.0, "labeled": False}])
    stream = pipeline.host_record_stream(cfg, seed=0, process_index=0, process_count=1)
    sources = np.array([stream[k][0] for k in range(400)])
    assert abs(np.mean(sources == 0) - 0.75) < 0.03
    batches = _batches(cfg, 2)
    is_labeled = np.concatenate([b["is_labeled"] for b in batches])
    np.testing.assert_array_equal(is_labeled, sources[:8] == 0)
    for batch in batches:
        unlabeled = ~batch["is_labeled"]
        assert not batch["valid_mask"][unlabeled].any() and not batch["normal_ok"][unlabeled].any()
        assert np.all(batch["depth"][unlabeled] == 0) and np.all(batch["points"][unlabeled] == 0)
        np.testing.assert_array_equal(batch["camera_poses"][unlabeled],
                                      np.broadcast_to(np.eye(4), (unlabeled.sum(), N, 4, 4)))
