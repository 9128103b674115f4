"""The clip record: one ArrayRecord entry = one video clip with optional 3D labels and flow targets.

Byte layout of one record (version 4)::

    magic       4 bytes  b"F3RC"
    version     uint16 little-endian   (RECORD_VERSION)
    index_crc   uint32 little-endian   (CRC-32C of the index)
    index_size  uint32 little-endian
    index       msgpack map (below)
    blobs       the blob area: every blob of the index, back to back

Index fields:

=================  =====================================================================================
``source_id``      str: where the clip came from (video path, synthetic spec, scene name)
``height``         int H; ``width`` int W: size of every frame
``normal_ok``      bool: labels are good enough for the normal loss
``timestamps``     (T,) float64 seconds
``flow_pairs``     (P, 2) int32 frame indices (i, j) within the clip, i != j
``intrinsics``     optional (T, 3, 3) float32 pixel units, (0, 0) = centre of the top-left pixel
``camera_poses``   optional (T, 4, 4) float32 camera-to-world, OpenCV axes (x right, y down, z forward)
``flow_stride``    int s >= 1: flow is stored per s x s cell of source pixels (flow3r_jax/data/flow_grid.py)
                   on the flow grid of Hf x Wf = ceil(H / s) x ceil(W / s) cells; 1 = per pixel
``blobs``          map field -> list of [offset, size, crc] (offset into the blob area, CRC-32C of the
                   blob), one per frame (``frames``, ``depth``, ``valid_mask``) or per flow pair
                   (``flow_coords``, ``flow_mask``)
=================  =====================================================================================

Small arrays are maps ``{"dtype", "shape", "data"}`` of little-endian bytes. Blobs, one per frame or pair;
every array blob is one Blosc2 chunk (LZ4HC level 3, byte shuffle over the element size):

=================  =====================================================================================
``frames[t]``      JPEG or PNG image, H x W, RGB (decoded by `decode_frames`)
``depth[t]``       (H, W) z-depth in the camera frame, 0 = unknown: float16 (relative rounding <= 2^-11,
                   e.g. <= 2 mm at 4 m); decoded to float32
``valid_mask[t]``  (H, W) bool as uint8 0/1
``flow_coords[p]`` (Hf, Wf, 2) target-image coordinates in NDC (flow3r_jax/geometry/ndc.py) of every pixel
                   (or cell centre) of frame i in frame j, quantized to int16 q = round(x * FLOW_NDC_SCALE)
                   (step 1/4096 NDC, rounding <= 0.03 px at W = 518). Values must be finite with
                   |x| <= FLOW_NDC_LIMIT (producers clip the coordinates of pixels that leave the image far
                   behind; those pixels are not co-visible anyway)
``flow_mask[p]``   (Hf, Wf) co-visibility / confidence in [0, 1], quantized to uint8 as round(255 m)
=================  =====================================================================================

The four label fields (depth, intrinsics, camera_poses, valid_mask) are either all present (labeled
clip) or all absent (unlabeled clip). P may be 0.

Why this layout: a training sample uses a few frames and pairs of a clip, so every frame, depth map,
mask and flow pair is its own blob and a sample decompresses exactly what it uses, each blob checked by
its own CRC (a damaged blob is reported as e.g. "shard#17: depth[3]"); CRC-32C runs in hardware, 7x
faster than zlib's CRC-32 (0.015 ms vs 0.1 ms for a 430 kB flow blob). The codec is chosen for reading
speed, since every training sample inflates 8 or more flow pairs and reads the whole record (about
1 ms per MB through ArrayRecord): on one 392 x 518 DIS pseudo-flow pair (one core of the 2-core
development machine) Blosc2 LZ4HC-3 with byte shuffle inflates in 0.13-0.15 ms at 1.86x smaller than
raw, where version 2's W-delta + zstd-3 took 0.9 ms plus 0.5 ms for the running sum at 3.1x (zstd or a
byte-delta filter inside Blosc2 reach 2.2-2.6x but inflate 2-4x slower, which costs more than the
smaller read saves); a float16 depth map 0.1 ms vs 0.27 ms. Writing takes about 8 ms per flow pair
(LZ4HC-9: 16 ms for 1.88x), against about 120 ms to estimate a DIS pair. Depth stays float16 so every
version decodes to the same values.

Flow stored per cell (s = 2, what video ingestion writes for DIS pseudo-flow and tools/build_shards.py
for the exact flow of synthetic clips) takes a quarter of the bytes; reading and inflating a sample's flow
costs as much less.

Older versions stay readable and decode to the same values: version 3 (this layout without
``flow_stride``: flow per pixel), version 2 (the same layout, blobs zstd
level 3, flow_coords delta-coded along W in int16 wrap-around arithmetic, zlib CRC-32 checksums) and
version 1 (flow3r_jax/data/records_v1.py: one msgpack body with each large field as one zlib-compressed
byte-planed array).

Reading: `open_clip` checks the header, the index checksum, keys, shapes and the blob table and decodes
the small fields; frames, depth, valid_mask and flow are then decoded only for the frames / pairs asked
for, which is what the training samples use. `decode_clip` decodes everything into a `Clip` (tools,
tests, shard checks). Version rule: any change to the layout or meaning of a field bumps RECORD_VERSION;
`open_clip` raises `RecordError` for a version it does not know.
Decoding needs only numpy, msgpack, blosc2, google-crc32c, zstandard and OpenCV (no TensorFlow), so Grain
workers can run it.
"""

from __future__ import annotations

import abc
import dataclasses
import struct
import zlib
from collections.abc import Callable, Sequence

import blosc2
import cv2
import google_crc32c
import msgpack
import numpy as np
import zstandard

from flow3r_jax.data.flow_grid import flow_grid_shape

RECORD_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
FLOW_NDC_SCALE = 4096.0
FLOW_NDC_LIMIT = 7.99
_MAGIC = b"F3RC"
_PREFIX = struct.Struct("<4sH")
_HEADER = struct.Struct("<4sHII")
LABEL_KEYS = ("depth", "intrinsics", "camera_poses", "valid_mask")
ARRAY_KEYS = ("timestamps", "flow_pairs", "flow_coords", "flow_mask") + LABEL_KEYS
_INDEX_KEYS = ("source_id", "height", "width", "normal_ok", "timestamps", "flow_pairs", "blobs")
_FRAME_BLOBS = ("frames", "depth", "valid_mask")
_PAIR_BLOBS = ("flow_coords", "flow_mask")
# Stored dtype and per-entry shape (in terms of H, W) of every compressed blob field.
_BLOB_ENTRIES = {"depth": (np.dtype("<f2"), ("H", "W")), "valid_mask": (np.dtype("u1"), ("H", "W")),
                 "flow_coords": (np.dtype("<i2"), ("H", "W", 2)), "flow_mask": (np.dtype("u1"), ("H", "W"))}


class RecordError(ValueError):
    """A clip record (or a clip about to be encoded) is malformed; the message names where."""


@dataclasses.dataclass
class Clip:
    """A decoded clip. T frames of size H x W, P flow pairs; label fields are all set or all None.
    flow_coords (P, Hf, Wf, 2) NDC and flow_mask (P, Hf, Wf) are on the flow grid of `flow_stride`
    (flow3r_jax/data/flow_grid.py; Hf, Wf = H, W at stride 1)."""

    source_id: str
    timestamps: np.ndarray
    frames: list
    height: int
    width: int
    depth: np.ndarray | None
    intrinsics: np.ndarray | None
    camera_poses: np.ndarray | None
    valid_mask: np.ndarray | None
    normal_ok: bool
    flow_pairs: np.ndarray
    flow_coords: np.ndarray
    flow_mask: np.ndarray
    flow_stride: int = 1

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def is_labeled(self) -> bool:
        return self.depth is not None


def encode_frame(image: np.ndarray, image_format: str = "jpeg", jpeg_quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG ("jpeg") or lossless PNG ("png") bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RecordError(f"frame must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    bgr = np.ascontiguousarray(image[..., ::-1])
    if image_format == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise RecordError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    if not ok:
        raise RecordError(f"could not encode a {image.shape} frame as {image_format}")
    return buf.tobytes()


def _quantize_flow(flow_coords: np.ndarray) -> np.ndarray:
    """(..., H, W, 2) NDC target coordinates -> (..., H, W, 2) int16 round(x * FLOW_NDC_SCALE)."""
    return np.rint(np.asarray(flow_coords, np.float64) * FLOW_NDC_SCALE).astype(np.int16)


def encode_clip(clip: Clip) -> bytes:
    """Clip -> record bytes (version 4, layout in the module docstring). RecordError on an invalid clip."""
    _check_clip(clip, clip.source_id)
    if not np.all(np.isfinite(clip.flow_coords)) or np.abs(clip.flow_coords).max(initial=0.0) > FLOW_NDC_LIMIT:
        raise RecordError(f"{clip.source_id}: flow_coords must be finite with |x| <= {FLOW_NDC_LIMIT}")
    fields = {"frames": [bytes(f) for f in clip.frames],
              "flow_coords": _compress_all(_quantize_flow(clip.flow_coords), "flow_coords"),
              "flow_mask": _compress_all(np.rint(np.clip(clip.flow_mask, 0.0, 1.0) * 255.0), "flow_mask")}
    index = {"source_id": clip.source_id, "height": int(clip.height), "width": int(clip.width),
             "normal_ok": bool(clip.normal_ok), "timestamps": _pack_small(clip.timestamps, "<f8"),
             "flow_pairs": _pack_small(clip.flow_pairs, "<i4"), "flow_stride": int(clip.flow_stride)}
    if clip.is_labeled:
        index["intrinsics"] = _pack_small(clip.intrinsics, "<f4")
        index["camera_poses"] = _pack_small(clip.camera_poses, "<f4")
        fields["depth"] = _compress_all(clip.depth, "depth")
        fields["valid_mask"] = _compress_all(clip.valid_mask, "valid_mask")
    table, offset = {}, 0
    for key, blobs in fields.items():
        table[key] = []
        for blob in blobs:
            table[key].append([offset, len(blob), crc32c(blob)])
            offset += len(blob)
    index["blobs"] = table
    packed_index = msgpack.packb(index, use_bin_type=True)
    header = _HEADER.pack(_MAGIC, RECORD_VERSION, crc32c(packed_index), len(packed_index))
    return b"".join([header, packed_index] + [blob for blobs in fields.values() for blob in blobs])


def crc32c(data) -> int:
    """CRC-32C (Castagnoli) of bytes or a memoryview, as an unsigned int (hardware-accelerated)."""
    return google_crc32c.value(np.frombuffer(data, np.uint8))  # its C entry point takes numpy buffers


def record_version(data: bytes, where: str = "") -> int:
    """The version field of record bytes (RecordError if they are not a clip record)."""
    where = where or "<record>"
    if len(data) < _PREFIX.size:
        raise RecordError(f"{where}: truncated record ({len(data)} bytes, header needs {_PREFIX.size})")
    magic, version = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise RecordError(f"{where}: not a clip record (magic {magic!r}, expected {_MAGIC!r})")
    return version


class FieldReader(abc.ABC):
    """Decodes entries of one large field of a record on demand."""

    @abc.abstractmethod
    def entries(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n,) valid entry indices -> stored values: (n, H, W) float16 depth / uint8 valid masks, or
        (n, Hf, Wf, 2) int16 quantized NDC flow / (n, Hf, Wf) uint8 flow confidence on the flow grid;
        written into `out` (that shape and dtype, each entry contiguous) when given, else new."""


@dataclasses.dataclass
class ClipRecord:
    """A clip record opened by `open_clip`: header, checksums of the index, keys and every declared shape
    checked, small fields decoded; frames, depth, valid_mask and flow are decoded when asked for by frame
    or pair index. T frames of size H x W, P flow pairs on the flow grid of `flow_stride`; intrinsics and
    camera_poses are None when unlabeled. `frames[t]` is the encoded image (its checksum verified on access)."""

    where: str
    version: int
    source_id: str
    timestamps: np.ndarray
    frames: Sequence
    height: int
    width: int
    intrinsics: np.ndarray | None
    camera_poses: np.ndarray | None
    normal_ok: bool
    flow_pairs: np.ndarray
    fields: dict  # field name -> FieldReader: depth, valid_mask (if labeled), flow_coords, flow_mask
    flow_stride: int = 1

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def is_labeled(self) -> bool:
        return "depth" in self.fields

    def decode_depth(self, frames) -> np.ndarray:
        """(n,) clip frame indices -> (n, H, W) float32 z-depth, 0 = unknown."""
        return self._entries("depth", frames).astype(np.float32)

    def decode_depth_float16(self, frames, out: np.ndarray | None = None) -> np.ndarray:
        """(n,) clip frame indices -> (n, H, W) float16 z-depth as stored (exact; cheaper to resample),
        written into `out` when given (entries contiguous, as `FieldReader.entries`)."""
        return self._entries("depth", frames, out)

    def decode_valid_mask(self, frames) -> np.ndarray:
        """(n,) clip frame indices -> (n, H, W) bool stored validity."""
        return self._entries("valid_mask", frames).astype(bool)

    def decode_valid_mask_uint8(self, frames, out: np.ndarray | None = None) -> np.ndarray:
        """(n,) clip frame indices -> (n, H, W) uint8 stored validity (nonzero = valid), into `out` when given."""
        return self._entries("valid_mask", frames, out)

    def decode_flow_quantized(self, pair_rows, out: tuple[np.ndarray, np.ndarray] | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
        """(s,) rows of `flow_pairs` -> stored flow on the flow grid: coords (s, Hf, Wf, 2) int16, NDC x
        FLOW_NDC_SCALE; mask (s, Hf, Wf) uint8, confidence x 255; written into `out` = (coords, mask)
        when given (entries contiguous, as `FieldReader.entries`)."""
        coords_out, mask_out = (None, None) if out is None else out
        return self._entries("flow_coords", pair_rows, coords_out), self._entries("flow_mask", pair_rows, mask_out)

    def decode_flow(self, pair_rows) -> tuple[np.ndarray, np.ndarray]:
        """(s,) rows of `flow_pairs` -> flow_coords (s, Hf, Wf, 2) float32 NDC, flow_mask (s, Hf, Wf) float32."""
        quantized, mask = self.decode_flow_quantized(pair_rows)
        coords = np.divide(quantized, np.float32(FLOW_NDC_SCALE), dtype=np.float32)
        return coords, np.divide(mask, np.float32(255.0), dtype=np.float32)

    def _entries(self, key: str, indices, out: np.ndarray | None = None) -> np.ndarray:
        if key not in self.fields:
            raise RecordError(f"{self.where}: the record has no {key} (unlabeled clip)")
        indices = np.asarray(indices, np.int64).reshape(-1)
        count = self.num_frames if key in _FRAME_BLOBS else len(self.flow_pairs)
        if indices.size and (indices.min() < 0 or indices.max() >= count):
            raise RecordError(f"{self.where}: {key} index out of range [0, {count}): {indices.tolist()}")
        return self.fields[key].entries(indices, out)


def unpack_map(packed, keys, where: str, what: str) -> dict:
    """msgpack bytes -> a map holding every one of `keys`; RecordError naming `where` and `what` otherwise."""
    try:
        unpacked = msgpack.unpackb(packed, raw=False)
    except (ValueError, msgpack.exceptions.UnpackException) as err:
        raise RecordError(f"{where}: cannot parse {what}: {err}") from err
    if not isinstance(unpacked, dict):
        raise RecordError(f"{where}: {what} is not a map")
    missing = [k for k in keys if k not in unpacked]
    if missing:
        raise RecordError(f"{where}: missing keys {missing}")
    return unpacked


def open_clip(data: bytes, where: str = "") -> ClipRecord:
    """Record bytes (any of READABLE_VERSIONS) -> ClipRecord (large fields still compressed). `where` (e.g.
    "train-00003-of-00008.array_record#17") names the record in every RecordError: unknown version, bad
    magic, truncation/corruption, missing keys, bad shapes; a damaged blob names its field and entry."""
    where = where or "<record>"
    version = record_version(data, where)
    if version == 1:
        from flow3r_jax.data.records_v1 import open_clip_v1  # only old shards need it
        return open_clip_v1(data, where)
    if version not in READABLE_VERSIONS:
        raise RecordError(f"{where}: unsupported record version {version}; this reader handles versions "
                          f"{list(READABLE_VERSIONS)} (rebuild the shards with this code)")
    if len(data) < _HEADER.size:
        raise RecordError(f"{where}: truncated record ({len(data)} bytes, header needs {_HEADER.size})")
    _, _, crc, index_size = _HEADER.unpack_from(data)
    view = memoryview(data)
    packed_index = view[_HEADER.size:_HEADER.size + index_size]
    codec = _CODECS[version]
    if len(packed_index) != index_size or codec.checksum(packed_index) != crc:
        raise RecordError(f"{where}: index checksum mismatch (record truncated or corrupted)")
    index = unpack_map(packed_index, _INDEX_KEYS + (("flow_stride",) if version >= 4 else ()), where,
                       "record index")
    table = index["blobs"]
    if not isinstance(table, dict) or any(k not in table for k in ("frames",) + _PAIR_BLOBS):
        raise RecordError(f"{where}: the blob table must list frames, flow_coords and flow_mask")
    labeled = [k for k in ("intrinsics", "camera_poses") if k in index] + [k for k in _FRAME_BLOBS[1:] if k in table]
    if labeled and len(labeled) != len(LABEL_KEYS):
        raise RecordError(f"{where}: label keys must be all present or all absent, got {labeled}")
    small = {k: _unpack_small(index[k], k, where) if k in index else None
             for k in ("timestamps", "flow_pairs", "intrinsics", "camera_poses")}
    height, width = index["height"], index["width"]
    stride = index.get("flow_stride", 1)
    _check_flow_stride(stride, where)
    blob_area = view[_HEADER.size + index_size:]
    blob_keys = ("frames",) + _PAIR_BLOBS + (_FRAME_BLOBS[1:] if labeled else ())
    blobs = {k: _Blobs(k, table[k], blob_area, where, codec.checksum) for k in blob_keys}
    fields = {k: _BlobField(blobs[k], *_entry_layout(k, height, width, stride), codec) for k in blob_keys[1:]}
    record = ClipRecord(where=where, version=version, source_id=index["source_id"], frames=blobs["frames"],
                        height=height, width=width, normal_ok=bool(index["normal_ok"]), fields=fields,
                        flow_stride=stride, **small)
    shapes = {k: np.shape(v) for k, v in small.items() if v is not None}
    shapes.update({k: (len(b),) + (() if k == "frames" else fields[k].entry_shape) for k, b in blobs.items()})
    check_shapes(where, len(blobs["frames"]), height, width, record.flow_pairs, shapes, stride)
    return record


def decode_clip(data: bytes, where: str = "") -> Clip:
    """Record bytes -> fully decoded Clip (every frame and pair); errors as `open_clip`."""
    record = open_clip(data, where)
    every_frame = range(record.num_frames)
    labeled = record.is_labeled
    flow_coords, flow_mask = record.decode_flow(range(len(record.flow_pairs)))
    return Clip(source_id=record.source_id, timestamps=record.timestamps,
                frames=[bytes(record.frames[t]) for t in every_frame], height=record.height, width=record.width,
                depth=record.decode_depth(every_frame) if labeled else None,
                intrinsics=record.intrinsics, camera_poses=record.camera_poses,
                valid_mask=record.decode_valid_mask(every_frame) if labeled else None,
                normal_ok=record.normal_ok, flow_pairs=record.flow_pairs, flow_coords=flow_coords,
                flow_mask=flow_mask, flow_stride=record.flow_stride)


def decode_frames(clip: Clip | ClipRecord, indices) -> np.ndarray:
    """Decode frames `indices` of `clip` -> (n, H, W, 3) uint8 RGB. RecordError names the clip/frame."""
    out = np.empty((len(indices), clip.height, clip.width, 3), np.uint8)
    for slot, index in enumerate(indices):
        out[slot] = decode_frame(clip, index)
    return out


def decode_frame(clip: Clip | ClipRecord, index: int) -> np.ndarray:
    """Decode frame `index` of `clip` -> (H, W, 3) uint8 RGB. RecordError names the clip/frame."""
    if not 0 <= index < clip.num_frames:
        raise RecordError(f"{clip.source_id}: frame index {index} out of range [0, {clip.num_frames})")
    rgb = cv2.imdecode(np.frombuffer(clip.frames[index], np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None or rgb.shape != (clip.height, clip.width, 3):
        got = None if rgb is None else rgb.shape
        raise RecordError(f"{clip.source_id}: frame {index} does not decode to "
                          f"({clip.height}, {clip.width}, 3) (got {got})")
    return rgb


def _compress_all(array: np.ndarray, key: str) -> list[bytes]:
    """(n, ...) array -> n Blosc2 chunks of its entries in the stored dtype of field `key`."""
    stored = np.ascontiguousarray(np.asarray(array).astype(_BLOB_ENTRIES[key][0]))
    return [blosc2.compress2(entry, codec=blosc2.Codec.LZ4HC, clevel=3, filters=[blosc2.Filter.SHUFFLE],
                             filters_meta=[0], typesize=stored.dtype.itemsize, nthreads=1) for entry in stored]


def _entry_layout(key: str, height: int, width: int, flow_stride: int) -> tuple[np.dtype, tuple[int, ...]]:
    dtype, shape = _BLOB_ENTRIES[key]
    if key in _PAIR_BLOBS:
        height, width = flow_grid_shape(height, width, flow_stride)
    return dtype, tuple({"H": height, "W": width}.get(d, d) for d in shape)


class _Blobs(Sequence):
    """The blobs of one field: `blobs[i]` is a memoryview of blob i after its CRC (`checksum`) is checked."""

    def __init__(self, key: str, table, area: memoryview, where: str, checksum):
        self.key, self.where, self._checksum = key, where, checksum
        try:
            self._table = [(int(o), int(n), int(c)) for o, n, c in table]
        except (TypeError, ValueError) as err:
            raise RecordError(f"{where}: blob table of {key!r} cannot be decoded: {err}") from err
        self._area = area
        for i, (offset, size, _) in enumerate(self._table):
            if offset < 0 or size < 0 or offset + size > len(area):
                raise RecordError(f"{where}: {key}[{i}] lies outside the record ({offset} + {size} bytes of "
                                  f"{len(area)}; record truncated?)")

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, i: int) -> memoryview:
        offset, size, crc = self._table[i]
        blob = self._area[offset:offset + size]
        if self._checksum(blob) != crc:
            raise RecordError(f"{self.where}: {self.key}[{i}]: checksum mismatch (blob corrupted)")
        return blob


class _BlobField(FieldReader):
    """A field of a version 2 to 4 record: one blob per entry, inflated by the version's `_BlobCodec`."""

    def __init__(self, blobs: _Blobs, dtype: np.dtype, entry_shape: tuple[int, ...], codec: _BlobCodec):
        self._blobs, self._dtype, self.entry_shape = blobs, dtype, entry_shape
        self._inflate = codec.inflate
        self._delta_coded = codec.flow_delta_coded and blobs.key == "flow_coords"

    def entries(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((len(indices),) + self.entry_shape, self._dtype.newbyteorder("="))
        for slot, i in enumerate(indices):
            try:
                self._inflate(self._blobs[i], out[slot])
            except ValueError as err:
                raise RecordError(f"{self._blobs.where}: {self._blobs.key}[{i}] {err}") from err
        if self._delta_coded:
            out[...] = undelta_flow(out)
        return out


def _inflate_blosc2(blob: memoryview, out: np.ndarray) -> None:
    """Decompress one Blosc2 chunk into the contiguous array `out`; ValueError if it cannot be
    decompressed or does not inflate to out.nbytes."""
    try:
        size = blosc2.get_cbuffer_sizes(blob)[0]
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"cannot be decompressed: {err}") from err
    if size != out.nbytes:
        raise ValueError(f"inflates to {size} bytes, expected {out.nbytes}")
    try:
        blosc2.decompress2(blob, dst=out, nthreads=1)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"cannot be decompressed: {err}") from err


def _inflate_zstd(blob: memoryview, out: np.ndarray) -> None:
    """Decompress one zstd frame (version 2) into `out`; ValueError as `_inflate_blosc2`."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=out.nbytes)
    except zstandard.ZstdError as err:
        raise ValueError(f"cannot be decompressed: {err}") from err
    if len(raw) != out.nbytes:
        raise ValueError(f"inflates to {len(raw)} bytes, expected {out.nbytes}")
    out[...] = np.frombuffer(raw, out.dtype).reshape(out.shape)


@dataclasses.dataclass(frozen=True)
class _BlobCodec:
    """What the blob versions differ in: the checksum of index and blobs (bytes -> unsigned int), how one
    blob inflates into its entry (`_inflate_*`), and whether flow_coords is delta-coded along W."""

    checksum: Callable
    inflate: Callable
    flow_delta_coded: bool


_BLOSC2_CRC32C = _BlobCodec(crc32c, _inflate_blosc2, flow_delta_coded=False)
_CODECS = {2: _BlobCodec(zlib.crc32, _inflate_zstd, flow_delta_coded=True), 3: _BLOSC2_CRC32C, 4: _BLOSC2_CRC32C}


def undelta_flow(deltas: np.ndarray) -> np.ndarray:
    """(n, H, W, 2) int16 flow deltas along W (version 2) -> their running sums along W in int16
    wrap-around arithmetic. Each (x, y) pair is summed as the two 32-bit lanes of one uint64 (no carry
    between them for W < 65537), which numpy accumulates about 5x faster than int16 pairs."""
    count, height, width, _ = deltas.shape
    lanes = deltas.view(np.uint16).astype(np.uint32).view(np.uint64).reshape(count, height, width)
    np.cumsum(lanes, axis=2, out=lanes)
    return lanes.view(np.uint32).reshape(deltas.shape).astype(np.int16)


def _pack_small(array: np.ndarray, dtype: str) -> dict:
    array = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype)))
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def _unpack_small(packed, key: str, where: str) -> np.ndarray:
    try:
        dtype, shape = np.dtype(packed["dtype"]), tuple(int(s) for s in packed["shape"])
        array = np.frombuffer(packed["data"], dtype).reshape(shape)
    except (KeyError, TypeError, ValueError) as err:
        raise RecordError(f"{where}: field {key!r} cannot be decoded: {err}") from err
    return array.astype(dtype.newbyteorder("="))


def _check_clip(clip: Clip, where: str) -> None:
    """Shape and range checks of a clip about to be encoded."""
    labels = [getattr(clip, k) for k in LABEL_KEYS]
    if any(x is not None for x in labels) and any(x is None for x in labels):
        raise RecordError(f"{where}: label fields {LABEL_KEYS} must be all set or all None")
    _check_flow_stride(clip.flow_stride, where)
    shapes = {k: np.shape(getattr(clip, k)) for k in ARRAY_KEYS if getattr(clip, k) is not None}
    check_shapes(where, len(clip.frames), clip.height, clip.width, np.asarray(clip.flow_pairs), shapes,
                 clip.flow_stride)


def _check_flow_stride(stride, where: str) -> None:
    """The writer's and the reader's check of a flow_stride (before it sizes the flow grid)."""
    if type(stride) is not int or stride < 1:
        raise RecordError(f"{where}: flow_stride must be a positive integer, got {stride!r}")


def check_shapes(where: str, t: int, h: int, w: int, flow_pairs: np.ndarray, shapes: dict,
                 flow_stride: int = 1) -> None:
    """Shape and range checks shared by the writer and the readers; `shapes` maps the array fields present
    (labels all or none) to their shapes; flow fields are on the flow grid of `flow_stride`."""
    p = flow_pairs.shape[0] if flow_pairs.ndim == 2 else -1
    hf, wf = flow_grid_shape(h, w, flow_stride)
    expected = {"timestamps": (t,), "flow_pairs": (p, 2), "flow_coords": (p, hf, wf, 2), "flow_mask": (p, hf, wf)}
    if "depth" in shapes:
        expected.update({"depth": (t, h, w), "intrinsics": (t, 3, 3), "camera_poses": (t, 4, 4),
                         "valid_mask": (t, h, w)})
    if t == 0 or h <= 0 or w <= 0:
        raise RecordError(f"{where}: clip needs at least one frame and a positive size, got T={t} {h}x{w}")
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise RecordError(f"{where}: {key} has shape {shapes[key]}, expected {shape}")
    if p and (flow_pairs.min() < 0 or flow_pairs.max() >= t or np.any(flow_pairs[:, 0] == flow_pairs[:, 1])):
        raise RecordError(f"{where}: flow_pairs must be distinct frame indices in [0, {t}), got "
                          f"{flow_pairs.tolist()}")
