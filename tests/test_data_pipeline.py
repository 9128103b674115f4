"""Grain input pipeline on real synthetic ArrayRecord shards: wire format and its expansion into the batch
contract (against float64 references from the fully decoded records), geometry, determinism, resume,
per-host sharding, corrupt input and source mixing."""

import os

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from support import data_config, reprojection_errors, run_tool, with_values

from flow3r_jax.data import pipeline
from flow3r_jax.data.buckets import train_buckets, wire_source_pixels
from flow3r_jax.data.records import RecordError, decode_clip, decode_frames, encode_clip, open_clip
from flow3r_jax.data.samples import SAMPLE_CONTRACT, build_sample
from flow3r_jax.data.sampling import sample_rng, select_frames_and_pairs
from flow3r_jax.data.shard_reader import read_clips
from flow3r_jax.data.shard_writer import WRITER_OPTIONS
from flow3r_jax.data.sources import resolve_sources
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset
from flow3r_jax.data.transforms import AREA_MIN_SHRINK, ColorJitter, center_crop, random_crop
from flow3r_jax.data.wire import WIRE_CONTRACT, expand_batch, wire_batch_shapes
from flow3r_jax.geometry.ndc import ndc_to_pixel, pixel_grid, pixel_to_ndc

N, S, H, W = 3, 2, 28, 42
NUM_TRAIN = 12
# Wire buffers of the output size (every per-pixel field resampled on the host) and of the 42 x 56 stored
# frames (every field shipped as stored and sampled by `expand_batch`).
HOST_RESAMPLED, AS_STORED = H * W, 42 * 56


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    cfg = data_config(cache_dir=str(tmp_path_factory.mktemp("synthetic")), num_frames=N, pairs_per_sample=S,
                      height=H, width=W, num_train_clips=NUM_TRAIN, num_eval_clips=5, synthetic_num_shards=3,
                      synthetic_height=42, synthetic_width=56, synthetic_frames_per_clip=4,
                      synthetic_pairs_per_clip=5, crop_scale_range=(0.6, 1.0), wire_source_area=2.0)
    ensure_synthetic_dataset(cfg)  # wire buffers of 2 x 28 x 42 = 42 x 56 pixels: the stored frames ship
    return cfg


def _iterator(cfg, **kwargs):
    """The training iterator of `cfg` with its buckets at a global batch of 4."""
    args = dict(seed=0, process_index=0, process_count=1) | kwargs
    return pipeline.make_train_iterator(cfg, buckets=train_buckets(cfg, global_batch_size=4), **args)


def _batches(cfg, n, **kwargs):
    """The first n wire batches of the training iterator."""
    iterator = _iterator(cfg, **kwargs)
    out = [next(iterator) for _ in range(n)]
    iterator.close()
    return out


def _expanded(batches):
    return [expand_batch(b, np) for b in batches]


def _assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_batch_matches_the_wire_and_batch_contracts(data_cfg):
    wire = _batches(data_cfg, 1)[0]
    assert set(wire) == set(WIRE_CONTRACT)
    for key, (shape, dtype) in wire_batch_shapes(4, N, S, H, W, wire_source_pixels(data_cfg, H, W)).items():
        assert wire[key].shape == shape and wire[key].dtype == dtype, key
    batch = expand_batch(wire, np)
    expected = {"images": ((4, N, H, W, 3), np.float32), "depth": ((4, N, H, W), np.float32),
                "valid_mask": ((4, N, H, W), np.bool_), "points": ((4, N, H, W, 3), np.float32),
                "camera_poses": ((4, N, 4, 4), np.float32), "intrinsics": ((4, N, 3, 3), np.float32),
                "is_labeled": ((4,), np.bool_), "normal_ok": ((4,), np.bool_),
                "pair_indices": ((4, S, 2), np.int32), "flow_coords": ((4, S, H, W, 2), np.float32),
                "flow_mask": ((4, S, H, W), np.float32)}
    assert set(batch) == set(expected) == set(SAMPLE_CONTRACT)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
        assert np.all(np.isfinite(batch[key])), key
    assert batch["images"].min() >= 0.0 and batch["images"].max() <= 1.0 and batch["images"].std() > 0.01
    assert batch["is_labeled"].all() and batch["valid_mask"].mean() > 0.9
    assert np.all(batch["depth"][~batch["valid_mask"]] == 0)
    assert batch["pair_indices"].min() >= 0 and batch["pair_indices"].max() < N
    assert 0.0 <= batch["flow_mask"].min() and batch["flow_mask"].max() <= 1.0 and batch["flow_mask"].mean() > 0.2


def _reference_sample(clip, selection, crop, jitter):
    """The batch contract of one sample from the fully decoded record (flow3r_jax.data.records.Clip):
    images resized in float32 (then the wire's own jitter is checked separately), labels of the nearest
    source pixel, world points and flow targets in float64; also the flow pixels within 1e-6 px of the
    border of the target image (where the float64 inside test may round either way)."""
    rows, cols = crop.nearest_source_index()
    frames = selection.frames
    window = decode_frames(clip, frames)[:, crop.y0:crop.y0 + crop.crop_height, crop.x0:crop.x0 + crop.crop_width]
    shrink = max(crop.crop_width / crop.out_width, crop.crop_height / crop.out_height)
    images = np.stack([cv2.resize(f.astype(np.float32) / 255.0, (crop.out_width, crop.out_height),
                                  interpolation=cv2.INTER_AREA if shrink > AREA_MIN_SHRINK else cv2.INTER_LINEAR)
                       for f in window])
    depth = clip.depth[frames][:, rows][:, :, cols].astype(np.float64)
    valid = clip.valid_mask[frames][:, rows][:, :, cols] & (depth > 0) & (depth < np.inf)
    depth = np.where(valid, depth, 0.0)
    pixels = np.stack(np.broadcast_arrays(cols[None, :], rows[:, None], 1.0), -1).astype(np.float64)
    poses, intrinsics = clip.camera_poses[frames].astype(np.float64), clip.intrinsics[frames].astype(np.float64)
    rays = np.einsum("nij,hwj->nhwi", poses[:, :3, :3] @ np.linalg.inv(intrinsics), pixels)
    points = np.where(valid[..., None], rays * depth[..., None] + poses[:, None, None, :3, 3], 0.0)
    stored = selection.pair_rows >= 0
    out_hw = (crop.out_height, crop.out_width)
    coords = np.broadcast_to(pixel_to_ndc(pixel_grid(*out_hw, np), *out_hw).astype(np.float64),
                             (len(stored),) + out_hw + (2,)).copy()
    mask, border = np.zeros((len(stored),) + out_hw), np.zeros((len(stored),) + out_hw, bool)
    for k, row in enumerate(selection.pair_rows):
        if row < 0:
            continue
        source = ndc_to_pixel(clip.flow_coords[row][rows][:, cols].astype(np.float64), clip.height, clip.width)
        out_px = (source + 0.5 - [crop.x0, crop.y0]) * np.array(crop.scale) - 0.5
        lower, upper = -0.5, np.array([crop.out_width, crop.out_height]) - 0.5
        inside = np.all((out_px >= lower) & (out_px <= upper), axis=-1)
        border[k] = np.any((np.abs(out_px - lower) < 1e-6) | (np.abs(out_px - upper) < 1e-6), axis=-1)
        coords[k] = pixel_to_ndc(out_px, *out_hw)
        mask[k] = np.where(inside, clip.flow_mask[row][rows][:, cols].astype(np.float64), 0.0)
    return {"images": images, "depth": depth, "valid_mask": valid, "points": points,
            "camera_poses": poses.astype(np.float32), "intrinsics": crop.transform_intrinsics(intrinsics),
            "flow_coords": coords, "flow_mask": mask}, border


@pytest.mark.parametrize("source_pixels", [HOST_RESAMPLED, AS_STORED])
def test_expanded_wire_samples_match_the_reference_contract_with_numpy_and_jax(data_cfg, source_pixels):
    """Real records, random and centre crops, with and without colour jitter, with padding pairs, each
    per-pixel field resampled on the host or shipped as stored: the wire sample expanded with numpy
    equals the contract computed from the fully decoded record within the stated tolerances, and
    jax.numpy (jitted) gives the numpy result within float32 rounding."""
    records = _train_records(data_cfg)
    expand_on_device = jax.jit(lambda wire: expand_batch(wire, jnp))
    padded = 0
    for index, data in enumerate(records[:3]):
        clip, full = open_clip(data, f"train#{index}"), decode_clip(data)
        rng = sample_rng(11, index)
        selection = select_frames_and_pairs(clip.num_frames, clip.flow_pairs, N, 4, rng)
        crop = center_crop((clip.height, clip.width), (H, W)) if index == 0 else \
            random_crop((clip.height, clip.width), (H, W), (0.6, 1.0), rng)
        jitter = ColorJitter(1.2, 0.8, 1.3, 0.1) if index == 2 else None
        sample = build_sample(clip, selection, crop, jitter, True, clip.where, source_pixels)
        wire = {k: v[None] for k, v in sample.items()}
        assert wire["image_row_weights"].any() == (source_pixels == AS_STORED)  # the device blends rows
        got = {k: v[0] for k, v in expand_batch(wire, np).items()}
        on_device = {k: np.asarray(v[0]) for k, v in expand_on_device(wire).items()}
        for key, (_, dtype) in SAMPLE_CONTRACT.items():
            assert got[key].dtype == on_device[key].dtype == dtype, key
            np.testing.assert_allclose(on_device[key], got[key], rtol=1e-6, atol=1e-6, err_msg=key)
        reference, border = _reference_sample(full, selection, crop, jitter)
        if jitter is None:
            # OpenCV's uint8 resize rounds to integers (0.5 / 255 from the float32 resize); the device's
            # float32 blend of stored pixels agrees with it to float32 rounding
            tolerance = 1 / 255 + 1e-6 if source_pixels == HOST_RESAMPLED else 1e-5
            np.testing.assert_allclose(got["images"], reference["images"], rtol=0, atol=tolerance)
        else:
            assert not np.allclose(got["images"], reference["images"], atol=0.02)
        np.testing.assert_array_equal(got["depth"], reference["depth"])  # float16 storage is exact in float32
        np.testing.assert_array_equal(got["valid_mask"], reference["valid_mask"])
        scale = np.abs(reference["points"]).max()
        np.testing.assert_allclose(got["points"], reference["points"], rtol=0, atol=1e-5 * scale)  # float32 map
        for key in ("camera_poses", "intrinsics"):
            np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
        np.testing.assert_allclose(got["flow_coords"], reference["flow_coords"], rtol=0, atol=2e-6)  # NDC <= 8
        clear = ~border
        np.testing.assert_array_equal(got["flow_mask"][clear], reference["flow_mask"][clear].astype(np.float32))
        assert not np.any(got["flow_mask"][~wire["pair_stored"][0]])
        padded += int((~wire["pair_stored"]).sum())
    assert padded > 0


def test_frames_shrunk_beyond_the_bilinear_range_are_area_averaged_on_the_host(data_cfg):
    """A crop shrunk more than AREA_MIN_SHRINK: the frames are resized on the host (area averaging, within
    OpenCV's uint8 rounding of the float32 reference) while the labels and flow still ship as stored and
    equal the reference's."""
    clip, full = (f(_train_records(data_cfg)[0]) for f in (open_clip, decode_clip))
    selection = select_frames_and_pairs(clip.num_frames, clip.flow_pairs, N, S, None)
    crop = center_crop((clip.height, clip.width), (14, 14))
    assert max(crop.crop_width / 14, crop.crop_height / 14) > AREA_MIN_SHRINK
    wire = {k: v[None] for k, v in build_sample(clip, selection, crop, None, True, clip.where, AS_STORED).items()}
    assert not wire["image_row_weights"].any()
    np.testing.assert_array_equal(wire["label_rows"][0], crop.nearest_source_index()[0] * clip.width)
    got = {k: v[0] for k, v in expand_batch(wire, np).items()}
    reference, border = _reference_sample(full, selection, crop, None)
    np.testing.assert_allclose(got["images"], reference["images"], rtol=0, atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(got["depth"], reference["depth"])
    np.testing.assert_array_equal(got["flow_mask"][~border], reference["flow_mask"][~border].astype(np.float32))


@pytest.mark.parametrize("source_pixels", [HOST_RESAMPLED, AS_STORED])
def test_samples_built_in_place_overwrite_every_byte(data_cfg, source_pixels):
    """Building into arrays full of garbage (one slot of a batch, as the pipeline does) gives exactly the
    sample built into new arrays, for labeled and unlabeled sources, with padding pairs, with the fields
    resampled on the host or shipped as stored."""
    records = _train_records(data_cfg)
    for index, labeled in ((0, True), (1, False)):
        clip = open_clip(records[index], f"train#{index}")
        rng = sample_rng(5, index)
        selection = select_frames_and_pairs(clip.num_frames, clip.flow_pairs, N, 8, rng)
        assert np.any(selection.pair_rows < 0) and np.any(selection.pair_rows >= 0)  # N frames have < 8 pairs
        crop = random_crop((clip.height, clip.width), (H, W), (0.6, 1.0), rng)
        fresh = build_sample(clip, selection, crop, ColorJitter(1.1, 0.9, 1.2, 0.05), labeled, clip.where,
                             source_pixels)
        shapes = wire_batch_shapes(1, N, 8, H, W, source_pixels)
        batch = {key: np.empty((2,) + shape[1:], dtype) for key, (shape, dtype) in shapes.items()}
        for array in batch.values():
            array.reshape(-1).view(np.uint8)[:] = 0xA5
        slot = {key: array[1, ...] for key, array in batch.items()}
        built = build_sample(clip, selection, crop, ColorJitter(1.1, 0.9, 1.2, 0.05), labeled, clip.where,
                             source_pixels, slot)
        for key, array in fresh.items():
            np.testing.assert_array_equal(batch[key][1], array, err_msg=key)
            assert built[key].base is not None and np.shares_memory(built[key], batch[key]), key


def test_singular_intrinsics_raise_naming_the_record(data_cfg):
    clip = decode_clip(_train_records(data_cfg)[0])
    clip.intrinsics[1] = 0.0
    record = open_clip(encode_clip(clip), "train#0")
    selection = select_frames_and_pairs(record.num_frames, record.flow_pairs, record.num_frames, S, None)
    crop = center_crop((record.height, record.width), (H, W))
    with pytest.raises(RecordError, match="train#0: the record's intrinsics are not invertible"):
        build_sample(record, selection, crop, None, True, record.where, HOST_RESAMPLED)


def test_cropped_labels_reproject_onto_cropped_flow(data_cfg):
    """Static scenes: transformed depth + intrinsics + poses, and transformed world points, reproduce the
    transformed flow targets on co-visible pixels. Points come from the same source pixel as the flow
    (tolerance 0.05 px: float16 storage of flow); unprojecting depth through the output pixel centre is
    off by at most half a source pixel (tolerance: median 0.45 px, every pixel 1.5 px)."""
    cfg = with_values(data_cfg, resolutions=[(28, 42), (42, 28), (28, 28)])
    batches = _expanded(_batches(cfg, 3))
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
    writer = ArrayRecordWriter(str(path), WRITER_OPTIONS)
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
    corrupt = rf"{shard}#(1: (\w+\[\d+\]: )?checksum|2: non-finite values in the record's camera_poses)"
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
    batches = _expanded(_batches(cfg, 2))
    is_labeled = np.concatenate([b["is_labeled"] for b in batches])
    np.testing.assert_array_equal(is_labeled, sources[:8] == 0)
    for batch in batches:
        unlabeled = ~batch["is_labeled"]
        assert not batch["valid_mask"][unlabeled].any() and not batch["normal_ok"][unlabeled].any()
        assert np.all(batch["depth"][unlabeled] == 0) and np.all(batch["points"][unlabeled] == 0)
        np.testing.assert_array_equal(batch["camera_poses"][unlabeled],
                                      np.broadcast_to(np.eye(4), (unlabeled.sum(), N, 4, 4)))


def test_benchmark_data_tool_times_both_sample_kinds_on_records_as_the_producers_store_them(tmp_path):
    """tools/benchmark_data.py at a tiny shape: one row per sample kind with positive rates, the sizes line,
    and shards of both kinds with flow per 2 x 2 cell (the producers' default)."""
    shape = ["--clips=8", "--clip_frames=4", "--clip_height=28", "--clip_width=42", "--num_frames=2",
             "--pairs=2", "--stored_pairs=2", "--height=28", "--width=42", "--batches=2", "--workers=0"]
    result = run_tool("benchmark_data", f"--cache_dir={tmp_path}", *shape, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["labeled"], ["flow-only"])]
    assert [row[:2] for row in rows] == [["labeled", "0"], ["flow-only", "0"]]
    assert all(float(value) > 0 for row in rows for value in row[2:])
    assert "MB per sample:" in result.stdout and "expand_batch with jax.numpy" in result.stdout
    shards = sorted(tmp_path.glob("benchmark-*/*.array_record"))
    assert len(shards) == 8
    for shard in shards:
        assert all(clip.flow_stride == 2 for clip in read_clips(shard))
