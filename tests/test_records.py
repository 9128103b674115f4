"""Clip record format: lossless/quantized round trip, version and corruption errors, real shard files."""

import struct
import zlib

import msgpack
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from flow3r_jax.data.shard_reader import read_clips
from flow3r_jax.data.shard_writer import WRITER_OPTIONS, shard_filename
from flow3r_jax.data.synthetic import synthetic_record
from flow3r_jax.data.records import (FLOW_NDC_SCALE, RECORD_VERSION, Clip, RecordError, decode_clip,
                                     decode_frames, encode_clip, open_clip)


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


def test_labeled_round_trip_within_stated_quantization(labeled_clip):
    decoded = decode_clip(encode_clip(labeled_clip), "test#0")
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


def test_selective_decoding_equals_full_decoding(labeled_clip):
    data = encode_clip(labeled_clip)
    full = decode_clip(data, "sel#0")
    record = open_clip(data, "sel#0")
    assert record.num_frames == 4 and record.is_labeled and record.normal_ok == full.normal_ok
    for key in ("timestamps", "flow_pairs", "intrinsics", "camera_poses"):
        np.testing.assert_array_equal(getattr(record, key), getattr(full, key), err_msg=key)
    for frames in ([2, 0], [1], [3], [0, 1, 2, 3], []):  # partial inflation, whole planes, nothing
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
        open_clip(encode_clip(unlabeled_clip(labeled_clip)), "sel#0").decode_depth([0])


def test_truncated_field_inside_a_valid_record_is_rejected_on_selective_decoding(labeled_clip):
    body = msgpack.unpackb(encode_clip(labeled_clip)[10:])
    body["depth"]["data"] = body["depth"]["data"][: len(body["depth"]["data"]) // 4]
    record = open_clip(_reheader(b"", RECORD_VERSION, msgpack.packb(body)), "cut#7")
    for frames in ([0], [3]):
        with pytest.raises(RecordError, match="cut#7: field 'depth' cannot be decoded"):
            record.decode_depth(frames)


def _reheader(data: bytes, version: int, body: bytes | None = None) -> bytes:
    body = data[10:] if body is None else body
    return struct.pack("<4sHI", b"F3RC", version, zlib.crc32(body)) + body


def test_unknown_version_is_rejected(labeled_clip):
    data = _reheader(encode_clip(labeled_clip), RECORD_VERSION + 1)
    with pytest.raises(RecordError, match=rf"shard-x#3: unsupported record version {RECORD_VERSION + 1}"):
        decode_clip(data, "shard-x#3")


def test_truncated_and_corrupted_records_are_rejected(labeled_clip):
    data = encode_clip(labeled_clip)
    with pytest.raises(RecordError, match="s#1: checksum mismatch"):
        decode_clip(data[: len(data) // 2], "s#1")
    with pytest.raises(RecordError, match="s#2: truncated record"):
        decode_clip(data[:5], "s#2")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    with pytest.raises(RecordError, match="s#4: checksum mismatch"):
        decode_clip(bytes(flipped), "s#4")
    with pytest.raises(RecordError, match="s#5: not a clip record"):
        decode_clip(b"JUNK" + data[4:], "s#5")


def test_missing_keys_and_bad_shapes_are_rejected(labeled_clip):
    body = msgpack.unpackb(encode_clip(labeled_clip)[10:])
    del body["flow_mask"]
    with pytest.raises(RecordError, match=r"r#0: missing keys \['flow_mask'\]"):
        decode_clip(_reheader(b"", RECORD_VERSION, msgpack.packb(body)), "r#0")
    body = msgpack.unpackb(encode_clip(labeled_clip)[10:])
    del body["depth"]
    with pytest.raises(RecordError, match="all present or all absent"):
        decode_clip(_reheader(b"", RECORD_VERSION, msgpack.packb(body)), "r#1")
    bad = Clip(**{**labeled_clip.__dict__, "flow_mask": labeled_clip.flow_mask[:, :-1]})
    with pytest.raises(RecordError, match=r"flow_mask has shape \(3, 27, 42\), expected \(3, 28, 42\)"):
        encode_clip(bad)
    bad = Clip(**{**labeled_clip.__dict__, "flow_pairs": np.array([[0, 0], [1, 2], [2, 3]], np.int32)})
    with pytest.raises(RecordError, match="flow_pairs must be distinct"):
        encode_clip(bad)
    bad = Clip(**{**labeled_clip.__dict__, "flow_coords": labeled_clip.flow_coords * np.nan})
    with pytest.raises(RecordError, match="flow_coords must be finite"):
        encode_clip(bad)


def test_corrupt_record_in_a_real_shard_names_shard_and_index(tmp_path, labeled_clip):
    name = shard_filename("test", 0, 1)
    good = encode_clip(labeled_clip)
    writer = ArrayRecordWriter(str(tmp_path / name), WRITER_OPTIONS)
    writer.write(good)
    writer.write(good[: len(good) - 100])
    writer.close()
    clips = read_clips(tmp_path / name)
    assert next(clips).source_id == labeled_clip.source_id
    with pytest.raises(RecordError, match=rf"{name}#1: checksum mismatch"):
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
