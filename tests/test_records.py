"""Clip record format: version 4 round trip (flow per pixel and per cell), versions 1 to 3 reading, version
and corruption errors, real shards."""

import json
import struct
import zlib

import msgpack
import numpy as np
import pytest
import zstandard
from array_record.python.array_record_module import ArrayRecordWriter

from flow3r_jax.data.flow_grid import coarsen_flow, refine_flow
from flow3r_jax.data.records import (
    FLOW_NDC_LIMIT,
    FLOW_NDC_SCALE,
    RECORD_VERSION,
    Clip,
    RecordError,
    crc32c,
    decode_clip,
    decode_frames,
    encode_clip,
    open_clip,
    undelta_flow,
)
from flow3r_jax.data.samples import build_sample
from flow3r_jax.data.sampling import sample_rng, select_frames_and_pairs
from flow3r_jax.data.shard_reader import read_clips
from flow3r_jax.data.shard_writer import WRITER_OPTIONS, finished_shard, shard_filename, write_shard
from flow3r_jax.data.synthetic import synthetic_record
from flow3r_jax.data.transforms import random_color_jitter, random_crop
from flow3r_jax.data.wire import expand_batch

_HEADER = struct.Struct("<4sHII")


@pytest.fixture(scope="module")
def labeled_clip():
    return synthetic_record(seed=5, height=28, width=42, num_frames=4, num_pairs=3, dynamic=True,
                            image_format="png")


def unlabeled_clip(labeled):
    return Clip(source_id="video.mp4#0", timestamps=labeled.timestamps, frames=labeled.frames,
                height=labeled.height, width=labeled.width, depth=None, intrinsics=None, camera_poses=None,
                valid_mask=None, normal_ok=False, flow_pairs=np.zeros((0, 2), np.int32),
                flow_coords=np.zeros((0, labeled.height, labeled.width, 2), np.float32),
                flow_mask=np.zeros((0, labeled.height, labeled.width), np.float32))


def encode_clip_v1(clip: Clip) -> bytes:
    """The version 1 writer (records_v1.py documents the layout): one msgpack body, large fields as
    byte-planed zlib streams."""
    def pack(array, dtype, compress):
        array = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype)))
        data = array.tobytes()
        if compress:
            planes = array.reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize).T
            data = zlib.compress(np.ascontiguousarray(planes).tobytes(), 1)
        return {"dtype": array.dtype.str, "shape": list(array.shape), "zlib": compress, "data": data}

    quantized = np.rint(np.asarray(clip.flow_coords, np.float64) * FLOW_NDC_SCALE).astype(np.int16)
    body = {"source_id": clip.source_id, "height": clip.height, "width": clip.width,
            "timestamps": pack(clip.timestamps, "<f8", False), "frames": [bytes(f) for f in clip.frames],
            "normal_ok": bool(clip.normal_ok), "flow_pairs": pack(clip.flow_pairs, "<i4", False),
            "flow_coords": pack(np.diff(quantized, axis=2, prepend=np.int16(0)), "<i2", True),
            "flow_mask": pack(np.rint(np.clip(clip.flow_mask, 0.0, 1.0) * 255.0), "u1", True)}
    if clip.is_labeled:
        body.update(depth=pack(clip.depth, "<f2", True), intrinsics=pack(clip.intrinsics, "<f4", False),
                    camera_poses=pack(clip.camera_poses, "<f4", False), valid_mask=pack(clip.valid_mask, "u1", True))
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack("<4sHI", b"F3RC", 1, zlib.crc32(payload)) + payload


def encode_clip_v3(clip: Clip) -> bytes:
    """The version 3 writer: the version 4 layout without flow_stride (flow per pixel)."""
    assert clip.flow_stride == 1
    index, blobs = _index(encode_clip(clip))
    del index["flow_stride"]
    return _with_index(index, blobs, version=3)


def encode_clip_v2(clip: Clip) -> bytes:
    """The version 2 writer (records.py documents it): the version 3 layout with zstd level 3 blobs and
    flow_coords delta-coded along W."""
    index, _ = _index(encode_clip_v3(clip))  # the same index; its blob table is rebuilt below
    quantized = np.rint(np.asarray(clip.flow_coords, np.float64) * FLOW_NDC_SCALE).astype(np.int16)
    arrays = {"flow_coords": np.diff(quantized, axis=2, prepend=np.int16(0)),
              "flow_mask": np.rint(np.clip(clip.flow_mask, 0.0, 1.0) * 255.0).astype(np.uint8)}
    if clip.is_labeled:
        arrays.update(depth=clip.depth.astype("<f2"), valid_mask=clip.valid_mask.astype(np.uint8))
    compressor = zstandard.ZstdCompressor(level=3)
    fields = {"frames": [bytes(f) for f in clip.frames]}
    fields.update({key: [compressor.compress(entry.tobytes()) for entry in array] for key, array in arrays.items()})
    table, area = {}, bytearray()
    for key, blobs in fields.items():
        table[key] = []
        for blob in blobs:
            table[key].append([len(area), len(blob), zlib.crc32(blob)])
            area += blob
    index["blobs"] = table
    return _with_index(index, bytes(area), version=2)


ENCODERS = {"v4": encode_clip, "v3": encode_clip_v3, "v2": encode_clip_v2, "v1": encode_clip_v1}


def _index(data: bytes) -> tuple[dict, bytes]:
    """(index map, blob area) of version 2 to 4 record bytes."""
    size = _HEADER.unpack_from(data)[3]
    return msgpack.unpackb(data[_HEADER.size:_HEADER.size + size]), data[_HEADER.size + size:]


def _with_index(index: dict, blobs: bytes, version: int = RECORD_VERSION) -> bytes:
    packed = msgpack.packb(index, use_bin_type=True)
    return _HEADER.pack(b"F3RC", version, _checksum(version)(packed), len(packed)) + packed + blobs


def _checksum(version: int):
    """The checksum of index and blobs: CRC-32C from version 3 on, zlib's CRC-32 in version 2."""
    return crc32c if version >= 3 else zlib.crc32


def _assert_clips_equal(a: Clip, b: Clip) -> None:
    assert a.source_id == b.source_id and a.normal_ok == b.normal_ok and list(a.frames) == list(b.frames)
    for key in ("timestamps", "flow_pairs", "intrinsics", "camera_poses", "depth", "valid_mask", "flow_coords",
                "flow_mask"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def test_labeled_round_trip_within_stated_quantization(labeled_clip):
    data = encode_clip(labeled_clip)
    assert struct.unpack_from("<H", data, 4)[0] == RECORD_VERSION == 4
    decoded = decode_clip(data, "test#0")
    assert decoded.source_id == labeled_clip.source_id and decoded.is_labeled and decoded.normal_ok
    assert decoded.frames == labeled_clip.frames
    np.testing.assert_array_equal(decoded.timestamps, labeled_clip.timestamps)
    np.testing.assert_array_equal(decoded.flow_pairs, labeled_clip.flow_pairs)
    np.testing.assert_array_equal(decoded.intrinsics, labeled_clip.intrinsics)
    np.testing.assert_array_equal(decoded.camera_poses, labeled_clip.camera_poses)
    np.testing.assert_array_equal(decoded.valid_mask, labeled_clip.valid_mask)
    # depth float16: relative rounding <= 2^-11; flow: half a quantization step; mask: half of 1/255.
    np.testing.assert_allclose(decoded.depth, labeled_clip.depth, rtol=2.0 ** -11, atol=0)
    assert np.abs(decoded.flow_coords - labeled_clip.flow_coords).max() <= 0.5 / FLOW_NDC_SCALE + 1e-7
    assert np.abs(decoded.flow_mask - labeled_clip.flow_mask).max() <= 0.5 / 255 + 1e-7
    assert decoded.depth.dtype == np.float32 and decoded.flow_coords.dtype == np.float32


def test_flow_running_sum_wraps_like_int16(labeled_clip):
    deltas = np.random.default_rng(0).integers(-32768, 32768, (2, 3, 600, 2)).astype(np.int16)
    np.testing.assert_array_equal(undelta_flow(deltas), np.cumsum(deltas, axis=2, dtype=np.int16))
    extremes = np.where(np.indices(labeled_clip.flow_coords.shape).sum(0) % 2, FLOW_NDC_LIMIT, -FLOW_NDC_LIMIT)
    clip = Clip(**{**labeled_clip.__dict__, "flow_coords": extremes.astype(np.float32)})  # deltas wrap around
    for encode in ENCODERS.values():
        decoded = decode_clip(encode(clip))
        assert np.abs(decoded.flow_coords - clip.flow_coords).max() <= 0.5 / FLOW_NDC_SCALE + 1e-6


def test_checksum_is_crc32c_of_bytes_and_views():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    assert crc32c(memoryview(b"..123456789..")[2:-2]) == 0xE3069283 and crc32c(b"") == 0


def test_unlabeled_round_trip(labeled_clip):
    clip = unlabeled_clip(labeled_clip)
    decoded = decode_clip(encode_clip(clip))
    assert not decoded.is_labeled and decoded.depth is None and decoded.valid_mask is None
    assert decoded.flow_coords.shape == (0, clip.height, clip.width, 2)


def test_decode_frames_png_is_exact(labeled_clip):
    frames = decode_frames(labeled_clip, [3, 0])
    assert frames.shape == (2, 28, 42, 3) and frames.dtype == np.uint8
    from flow3r_jax.data.synthetic import generate_clip
    images = generate_clip(5, 28, 42, 4, True).images
    np.testing.assert_array_equal(frames, images[[3, 0]])
    with pytest.raises(RecordError, match="frame index 4"):
        decode_frames(labeled_clip, [4])


@pytest.mark.parametrize("encode", ENCODERS.values(), ids=ENCODERS.keys())
def test_selective_decoding_equals_full_decoding(labeled_clip, encode):
    data = encode(labeled_clip)
    full = decode_clip(data, "sel#0")
    record = open_clip(data, "sel#0")
    assert record.num_frames == 4 and record.is_labeled and record.normal_ok == full.normal_ok
    for key in ("timestamps", "flow_pairs", "intrinsics", "camera_poses"):
        np.testing.assert_array_equal(getattr(record, key), getattr(full, key), err_msg=key)
    for frames in ([2, 0], [1], [3], [0, 1, 2, 3], []):
        depth, valid = record.decode_depth(frames), record.decode_valid_mask(frames)
        assert depth.dtype == np.float32 and valid.dtype == np.bool_
        np.testing.assert_array_equal(depth, full.depth[frames])
        np.testing.assert_array_equal(valid, full.valid_mask[frames])
        np.testing.assert_array_equal(decode_frames(record, frames), decode_frames(full, frames))
    for rows in ([1, 0], [0], [2], [2, 1, 0], []):
        coords, mask = record.decode_flow(rows)
        assert coords.dtype == np.float32 and mask.dtype == np.float32
        np.testing.assert_array_equal(coords, full.flow_coords[rows])
        np.testing.assert_array_equal(mask, full.flow_mask[rows])
    with pytest.raises(RecordError, match=r"sel#0: depth index out of range \[0, 4\)"):
        record.decode_depth([4])
    with pytest.raises(RecordError, match="sel#0: the record has no depth"):
        open_clip(encode(unlabeled_clip(labeled_clip)), "sel#0").decode_depth([0])


def test_older_versions_decode_to_the_current_values(labeled_clip):
    for clip in (labeled_clip, unlabeled_clip(labeled_clip)):
        new = decode_clip(encode_clip(clip), "v4#0")
        for version, encode in ((1, encode_clip_v1), (2, encode_clip_v2), (3, encode_clip_v3)):
            old = encode(clip)
            assert struct.unpack_from("<H", old, 4)[0] == version == open_clip(old, "old#0").version
            _assert_clips_equal(decode_clip(old, "old#0"), new)


@pytest.mark.parametrize("source_pixels", [14 * 28, 28 * 42])  # labels and flow resampled here / as stored
def test_every_version_gives_identical_samples(labeled_clip, source_pixels):
    records = [open_clip(encode(labeled_clip), f"{name}#0") for name, encode in ENCODERS.items()]
    for index in range(3):
        rng = sample_rng(7, index)
        selection = select_frames_and_pairs(4, labeled_clip.flow_pairs, 3, 2, rng)
        crop = random_crop((28, 42), (14, 28), (0.6, 1.0), rng)
        jitter = random_color_jitter(rng, 0.2, 0.2, 0.2, 0.02)
        new, *olds = (build_sample(r, selection, crop, jitter, True, r.where, source_pixels) for r in records)
        for old in olds:
            for key in new:
                np.testing.assert_array_equal(old[key], new[key], err_msg=key)


def test_unknown_version_is_rejected(labeled_clip):
    index, blobs = _index(encode_clip(labeled_clip))
    for version in (0, RECORD_VERSION + 1):
        with pytest.raises(RecordError, match=rf"shard-x#3: unsupported record version {version}; this reader "
                                              r"handles versions \[1, 2, 3, 4\]"):
            decode_clip(_with_index(index, blobs, version), "shard-x#3")


@pytest.mark.parametrize("encode", [encode_clip, encode_clip_v2], ids=["v4", "v2"])
def test_corrupt_blob_names_record_and_field(labeled_clip, encode):
    data = encode(labeled_clip)
    index, blobs = _index(data)
    start = len(data) - len(blobs)
    for field, entry in (("depth", 2), ("flow_coords", 1), ("frames", 3), ("valid_mask", 0)):
        offset, size, _ = index["blobs"][field][entry]
        flipped = bytearray(data)
        flipped[start + offset + size // 2] ^= 0x5A
        record = open_clip(bytes(flipped), "shard#5")  # the index is intact; only that blob is damaged
        with pytest.raises(RecordError, match=rf"shard#5: {field}\[{entry}\]: checksum mismatch"):
            decode_clip(bytes(flipped), "shard#5")
        others = [k for k in range(len(index["blobs"][field])) if k != entry]
        if field == "depth":  # the other entries of the damaged field still decode
            np.testing.assert_array_equal(record.decode_depth(others), decode_clip(data).depth[others])
    bad = zlib.compress(b"x")  # right checksum, neither a Blosc2 chunk nor a zstd frame
    version = open_clip(data).version
    index["blobs"]["depth"][0] = [len(blobs), len(bad), _checksum(version)(bad)]
    with pytest.raises(RecordError, match=r"r#3: depth\[0\] cannot be decompressed"):
        open_clip(_with_index(index, blobs + bad, version), "r#3").decode_depth([0])


def test_truncated_and_corrupted_records_are_rejected(labeled_clip):
    data = encode_clip(labeled_clip)
    with pytest.raises(RecordError, match=r"s#1: \w+\[\d+\] lies outside the record"):
        decode_clip(data[: len(data) // 2], "s#1")
    with pytest.raises(RecordError, match="s#2: truncated record"):
        decode_clip(data[:5], "s#2")
    flipped = bytearray(data)
    flipped[_HEADER.size + 3] ^= 0xFF
    with pytest.raises(RecordError, match="s#4: index checksum mismatch"):
        decode_clip(bytes(flipped), "s#4")
    with pytest.raises(RecordError, match="s#5: not a clip record"):
        decode_clip(b"JUNK" + data[4:], "s#5")
    old = encode_clip_v1(labeled_clip)
    with pytest.raises(RecordError, match="s#6: checksum mismatch"):
        decode_clip(old[: len(old) // 2], "s#6")


def test_missing_keys_and_bad_shapes_are_rejected(labeled_clip):
    index, blobs = _index(encode_clip(labeled_clip))
    del index["timestamps"]
    with pytest.raises(RecordError, match=r"r#0: missing keys \['timestamps'\]"):
        decode_clip(_with_index(index, blobs), "r#0")
    index, blobs = _index(encode_clip(labeled_clip))
    del index["blobs"]["depth"]
    with pytest.raises(RecordError, match="all present or all absent"):
        decode_clip(_with_index(index, blobs), "r#1")
    index, blobs = _index(encode_clip(labeled_clip))
    index["blobs"]["flow_mask"].pop()
    with pytest.raises(RecordError, match=r"r#2: flow_mask has shape \(2, 28, 42\), expected \(3, 28, 42\)"):
        decode_clip(_with_index(index, blobs), "r#2")
    bad = Clip(**{**labeled_clip.__dict__, "flow_mask": labeled_clip.flow_mask[:, :-1]})
    with pytest.raises(RecordError, match=r"flow_mask has shape \(3, 27, 42\), expected \(3, 28, 42\)"):
        encode_clip(bad)
    bad = Clip(**{**labeled_clip.__dict__, "flow_pairs": np.array([[0, 0], [1, 2], [2, 3]], np.int32)})
    with pytest.raises(RecordError, match="flow_pairs must be distinct"):
        encode_clip(bad)
    bad = Clip(**{**labeled_clip.__dict__, "flow_coords": labeled_clip.flow_coords * np.nan})
    with pytest.raises(RecordError, match="flow_coords must be finite"):
        encode_clip(bad)


def test_shards_hold_current_version_records_only(tmp_path, labeled_clip):
    with pytest.raises(RecordError, match=f"old#0: record version 1; shards are written in version {RECORD_VERSION} "
                                          "only"):
        write_shard(tmp_path, "test", 0, 1, [("old#0", encode_clip_v1(labeled_clip))], build={})
    assert not list(tmp_path.glob("*.array_record"))
    entry = write_shard(tmp_path, "test", 0, 1, [("new#0", encode_clip(labeled_clip))], build={"b": 1})
    assert entry["record_version"] == RECORD_VERSION
    assert finished_shard(tmp_path, "test", 0, 1, {"b": 1}) == entry
    entry_path = tmp_path / (entry["file"] + ".json")
    entry_path.write_text(json.dumps({**entry, "record_version": 1}))  # built by an older version: rebuild
    assert finished_shard(tmp_path, "test", 0, 1, {"b": 1}) is None


def test_corrupt_record_in_a_real_shard_names_shard_index_and_field(tmp_path, labeled_clip):
    name = shard_filename("test", 0, 1)
    good = encode_clip(labeled_clip)
    damaged = bytearray(good)
    damaged[-10] ^= 0xFF  # inside the last blob, valid_mask[3]
    writer = ArrayRecordWriter(str(tmp_path / name), WRITER_OPTIONS)
    for record in (good, bytes(damaged)):
        writer.write(record)
    writer.close()
    clips = read_clips(tmp_path / name)
    assert next(clips).source_id == labeled_clip.source_id
    with pytest.raises(RecordError, match=rf"{name}#1: valid_mask\[3\]: checksum mismatch"):
        next(clips)


def test_truncated_shard_file_is_reported(tmp_path, labeled_clip):
    name = shard_filename("test", 0, 1)
    writer = ArrayRecordWriter(str(tmp_path / name), WRITER_OPTIONS)
    for _ in range(3):
        writer.write(encode_clip(labeled_clip))
    writer.close()
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError, match=name):
        list(read_clips(tmp_path / name))


def cell_clip(clip: Clip, stride: int = 2) -> Clip:
    """`clip` with its flow stored per stride x stride cell (flow3r_jax/data/flow_grid.py)."""
    coords, mask = coarsen_flow(clip.flow_coords, clip.flow_mask, stride, max_error_px=1.0)
    return Clip(**{**clip.__dict__, "flow_coords": coords, "flow_mask": mask, "flow_stride": stride})


def test_flow_per_cell_round_trip_and_errors(labeled_clip):
    clip = cell_clip(labeled_clip)
    data = encode_clip(clip)
    decoded = decode_clip(data, "cells#0")
    assert decoded.flow_stride == open_clip(data).flow_stride == 2
    assert decoded.flow_coords.shape == (3, 14, 21, 2) and decoded.flow_mask.shape == (3, 14, 21)
    assert np.abs(decoded.flow_coords - clip.flow_coords).max() <= 0.5 / FLOW_NDC_SCALE + 1e-7
    assert np.abs(decoded.flow_mask - clip.flow_mask).max() <= 0.5 / 255 + 1e-7
    np.testing.assert_array_equal(decoded.depth, decode_clip(encode_clip(labeled_clip)).depth)
    for stride in (0, 2.0, True):
        with pytest.raises(RecordError, match=f"flow_stride must be a positive integer, got {stride!r}"):
            encode_clip(Clip(**{**clip.__dict__, "flow_stride": stride}))
    with pytest.raises(RecordError, match=r"flow_coords has shape \(3, 28, 42, 2\), expected \(3, 14, 21, 2\)"):
        encode_clip(Clip(**{**labeled_clip.__dict__, "flow_stride": 2}))
    index, blobs = _index(data)
    index["flow_stride"] = 3
    with pytest.raises(RecordError, match=r"r#1: flow_coords\[0\] inflates to 1176 bytes, expected 560"):
        decode_clip(_with_index(index, blobs), "r#1")  # 14 x 21 cells stored, 10 x 14 declared
    del index["flow_stride"]
    with pytest.raises(RecordError, match=r"r#2: missing keys \['flow_stride'\]"):
        open_clip(_with_index(index, blobs), "r#2")


@pytest.mark.parametrize("size", [(28, 42), (27, 41)])
@pytest.mark.parametrize("source_pixels", [14 * 28, 28 * 42])  # flow cells gathered here / as stored
def test_samples_of_flow_per_cell_equal_those_of_its_full_resolution_expansion(size, source_pixels):
    """A sample moves every pixel with its cell: the same flow targets (to the rounding of the cell-to-pixel
    shift, 1 integer = 1 / FLOW_NDC_SCALE NDC before the crop's scale) and masks as the per-pixel record of
    `refine_flow`, and every other key of the batch contract equal."""
    height, width = size
    full = synthetic_record(seed=3, height=height, width=width, num_frames=4, num_pairs=3, dynamic=True,
                            image_format="png")
    cells = cell_clip(full)
    coords, mask = refine_flow(cells.flow_coords, cells.flow_mask, height, width, 2)
    expanded = Clip(**{**full.__dict__, "flow_coords": coords, "flow_mask": mask})
    records = [open_clip(encode_clip(c), name) for c, name in ((cells, "cells#0"), (expanded, "pixels#0"))]
    for index in range(6):
        rng = sample_rng(11, index)
        selection = select_frames_and_pairs(4, full.flow_pairs, 3, 2, rng)
        crop = random_crop(size, (14, 28), (0.6, 1.0), rng)
        wires = [build_sample(r, selection, crop, None, True, r.where, source_pixels) for r in records]
        from_cells, from_pixels = (expand_batch({k: v[None] for k, v in w.items()}, np) for w in wires)
        one_integer = wires[0]["flow_to_ndc"][:, 0]
        difference = np.abs(from_cells["flow_coords"] - from_pixels["flow_coords"])
        assert np.all(difference <= one_integer + 2e-6)  # plus float32 rounding of NDC values up to 8
        for key in from_cells.keys() - {"flow_coords"}:
            np.testing.assert_array_equal(from_cells[key], from_pixels[key], err_msg=key)
