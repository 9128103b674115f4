"""The clip record: one ArrayRecord entry = one video clip with optional 3D labels and flow targets.

Byte layout of one record (version 1)::

    magic    4 bytes  b"F3RC"
    version  uint16 little-endian   (RECORD_VERSION; readers reject any other value)
    crc32    uint32 little-endian   (zlib.crc32 of the body; detects truncation and corruption)
    body     msgpack map (below)

Body fields (arrays are stored as maps ``{"dtype", "shape", "zlib", "data"}`` holding little-endian
bytes; when ``zlib`` is true the bytes are split into byte planes (all first bytes of every element, then
all second bytes, ...) and zlib-compressed, which compresses smooth numeric data well):

=================  =====================================================================================
``source_id``      str: where the clip came from (video path, synthetic spec, scene name)
``height``         int H; ``width`` int W: size of every frame
``timestamps``     (T,) float64 seconds, raw
``frames``         list of T bytes: JPEG or PNG images, H x W, RGB (decoded by `decode_frames`)
``normal_ok``      bool: labels are good enough for the normal loss
``depth``          optional (T, H, W) z-depth in the camera frame, 0 = unknown; float16 + zlib (relative
                   rounding <= 2.5e-4, e.g. <= 1 mm at 4 m); decoded to float32
``intrinsics``     optional (T, 3, 3) float32 pixel units, (0, 0) = centre of the top-left pixel; raw
``camera_poses``   optional (T, 4, 4) float32 camera-to-world, OpenCV axes (x right, y down, z forward); raw
``valid_mask``     optional (T, H, W) bool stored as uint8 0/1; zlib
``flow_pairs``     (P, 2) int32 frame indices (i, j) within the clip, i != j; raw
``flow_coords``    (P, H, W, 2) target-image coordinates in NDC (flow3r_jax/geometry/ndc.py) of every pixel
                   of frame i in frame j. Quantized to int16 q = round(x * FLOW_NDC_SCALE) (step 1/4096 NDC,
                   rounding <= 0.03 px at W = 518), delta-coded along W (int16 wrap-around arithmetic), zlib.
                   Values must be finite with |x| <= FLOW_NDC_LIMIT (producers clip the coordinates of
                   pixels that leave the image far behind; those pixels are not co-visible anyway)
``flow_mask``      (P, H, W) co-visibility / confidence in [0, 1], quantized to uint8 as round(255 m); zlib
=================  =====================================================================================

The four label fields are either all present (labeled clip) or all absent (unlabeled clip). P may be 0.

Reading: `open_clip` checks the header, checksum, keys and declared shapes and decodes the small fields;
depth, valid_mask and flow are then decompressed only for the frames / pairs asked for (a byte-planed
field is inflated only as far as the last of those entries reaches), which is what the training samples
use. `decode_clip` decodes everything into a `Clip` (tools, tests, shard checks).

Version rule: any change to the layout or meaning of a field bumps RECORD_VERSION; `open_clip` and
`decode_clip` raise `RecordError` for every version other than the current one, so old shards are
rebuilt, never misread.
Decoding needs only numpy, msgpack and OpenCV (no TensorFlow), so Grain workers can run it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib

import cv2
import msgpack
import numpy as np

RECORD_VERSION = 1
_MAGIC = b"F3RC"
_HEADER = struct.Struct("<4sHI")
_LABEL_KEYS = ("depth", "intrinsics", "camera_poses", "valid_mask")
_BODY_KEYS = ("source_id", "height", "width", "timestamps", "frames", "normal_ok", "flow_pairs",
              "flow_coords", "flow_mask")
_ARRAY_KEYS = ("timestamps", "flow_pairs", "flow_coords", "flow_mask") + _LABEL_KEYS
FLOW_NDC_SCALE = 4096.0
FLOW_NDC_LIMIT = 7.99


class RecordError(ValueError):
    """A clip record (or a clip about to be encoded) is malformed; the message names where."""


@dataclasses.dataclass
class Clip:
    """A decoded clip. T frames of size H x W, P flow pairs; label fields are all set or all None."""

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


def encode_clip(clip: Clip) -> bytes:
    """Clip -> record bytes (layout in the module docstring). Raises RecordError on an invalid clip."""
    _check_clip(clip, clip.source_id)
    if not np.all(np.isfinite(clip.flow_coords)) or np.abs(clip.flow_coords).max(initial=0.0) > FLOW_NDC_LIMIT:
        raise RecordError(f"{clip.source_id}: flow_coords must be finite with |x| <= {FLOW_NDC_LIMIT}")
    quantized = np.rint(np.asarray(clip.flow_coords, np.float64) * FLOW_NDC_SCALE).astype(np.int16)
    body = {
        "source_id": clip.source_id,
        "height": int(clip.height),
        "width": int(clip.width),
        "timestamps": _pack(clip.timestamps, np.float64, compress=False),
        "frames": [bytes(f) for f in clip.frames],
        "normal_ok": bool(clip.normal_ok),
        "flow_pairs": _pack(clip.flow_pairs, np.int32, compress=False),
        "flow_coords": _pack(np.diff(quantized, axis=2, prepend=np.int16(0)), np.int16, compress=True),
        "flow_mask": _pack(np.rint(np.clip(clip.flow_mask, 0.0, 1.0) * 255.0), np.uint8, compress=True),
    }
    if clip.is_labeled:
        body["depth"] = _pack(clip.depth, np.float16, compress=True)
        body["intrinsics"] = _pack(clip.intrinsics, np.float32, compress=False)
        body["camera_poses"] = _pack(clip.camera_poses, np.float32, compress=False)
        body["valid_mask"] = _pack(clip.valid_mask, np.uint8, compress=True)
    payload = msgpack.packb(body, use_bin_type=True)
    return _HEADER.pack(_MAGIC, RECORD_VERSION, zlib.crc32(payload)) + payload


@dataclasses.dataclass
class ClipRecord:
    """A clip record opened by `open_clip`: checksum, keys and every field's declared shape are checked,
    the small fields are decoded, and depth, valid_mask and flow stay compressed until asked for by frame
    or pair index. T frames of size H x W, P flow pairs; intrinsics/camera_poses are None when unlabeled."""

    where: str
    source_id: str
    timestamps: np.ndarray
    frames: list
    height: int
    width: int
    intrinsics: np.ndarray | None
    camera_poses: np.ndarray | None
    normal_ok: bool
    flow_pairs: np.ndarray
    packed: dict  # field name -> _PackedArray, still compressed: depth, valid_mask (if labeled), flow_*

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def is_labeled(self) -> bool:
        return "depth" in self.packed

    def decode_depth(self, frames) -> np.ndarray:
        """(n,) clip frame indices -> (n, H, W) float32 z-depth, 0 = unknown."""
        return self._rows("depth", frames).astype(np.float32)

    def decode_valid_mask(self, frames) -> np.ndarray:
        """(n,) clip frame indices -> (n, H, W) bool stored validity."""
        return self._rows("valid_mask", frames).astype(bool)

    def decode_flow(self, pair_rows) -> tuple[np.ndarray, np.ndarray]:
        """(s,) rows of `flow_pairs` -> flow_coords (s, H, W, 2) float32 NDC, flow_mask (s, H, W) float32."""
        deltas = self._rows("flow_coords", pair_rows)
        quantized = np.cumsum(deltas, axis=2, dtype=np.int16)
        coords = np.divide(quantized, np.float32(FLOW_NDC_SCALE), dtype=np.float32)
        return coords, np.divide(self._rows("flow_mask", pair_rows), np.float32(255.0), dtype=np.float32)

    def _rows(self, key: str, indices) -> np.ndarray:
        if key not in self.packed:
            raise RecordError(f"{self.where}: the record has no {key} (unlabeled clip)")
        return self.packed[key].rows(indices, self.where)


def open_clip(data: bytes, where: str = "") -> ClipRecord:
    """Record bytes -> ClipRecord (large fields still compressed). `where` (e.g.
    "train-00003-of-00008.array_record#17") names the record in every RecordError: unknown version, bad
    magic, truncation/corruption, missing keys, bad shapes."""
    where = where or "<record>"
    if len(data) < _HEADER.size:
        raise RecordError(f"{where}: truncated record ({len(data)} bytes, header needs {_HEADER.size})")
    magic, version, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise RecordError(f"{where}: not a clip record (magic {magic!r}, expected {_MAGIC!r})")
    if version != RECORD_VERSION:
        raise RecordError(f"{where}: unsupported record version {version}; this reader handles "
                          f"version {RECORD_VERSION} only (rebuild the shards)")
    payload = memoryview(data)[_HEADER.size:]
    if zlib.crc32(payload) != crc:
        raise RecordError(f"{where}: checksum mismatch (record truncated or corrupted)")
    try:
        body = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.exceptions.UnpackException) as err:
        raise RecordError(f"{where}: cannot parse record body: {err}") from err
    if not isinstance(body, dict):
        raise RecordError(f"{where}: record body is not a map")
    missing = [k for k in _BODY_KEYS if k not in body]
    if missing:
        raise RecordError(f"{where}: missing keys {missing}")
    present_labels = [k for k in _LABEL_KEYS if k in body]
    if present_labels and len(present_labels) != len(_LABEL_KEYS):
        raise RecordError(f"{where}: label keys must be all present or all absent, got {present_labels}")
    arrays = {k: _PackedArray.parse(body[k], k, where) for k in _ARRAY_KEYS if k in body}
    small = {k: arrays.pop(k).all_rows(where) if k in arrays else None
             for k in ("timestamps", "flow_pairs", "intrinsics", "camera_poses")}
    record = ClipRecord(where=where, source_id=body["source_id"], frames=list(body["frames"]),
                        height=body["height"], width=body["width"], normal_ok=bool(body["normal_ok"]),
                        packed=arrays, **small)
    shapes = {k: np.shape(v) for k, v in small.items() if v is not None}
    shapes.update({k: a.shape for k, a in arrays.items()})
    _check_shapes(where, record.num_frames, record.height, record.width, record.flow_pairs, shapes)
    return record


def decode_clip(data: bytes, where: str = "") -> Clip:
    """Record bytes -> fully decoded Clip (every frame and pair); errors as `open_clip`."""
    record = open_clip(data, where)
    every_frame = range(record.num_frames)
    labeled = record.is_labeled
    flow_coords, flow_mask = record.decode_flow(range(len(record.flow_pairs)))
    return Clip(source_id=record.source_id, timestamps=record.timestamps, frames=record.frames,
                height=record.height, width=record.width,
                depth=record.decode_depth(every_frame) if labeled else None,
                intrinsics=record.intrinsics, camera_poses=record.camera_poses,
                valid_mask=record.decode_valid_mask(every_frame) if labeled else None,
                normal_ok=record.normal_ok, flow_pairs=record.flow_pairs, flow_coords=flow_coords,
                flow_mask=flow_mask)


def decode_frames(clip: Clip | ClipRecord, indices) -> np.ndarray:
    """Decode frames `indices` of `clip` -> (n, H, W, 3) uint8 RGB. RecordError names the clip/frame."""
    out = np.empty((len(indices), clip.height, clip.width, 3), np.uint8)
    for slot, index in enumerate(indices):
        if not 0 <= index < clip.num_frames:
            raise RecordError(f"{clip.source_id}: frame index {index} out of range [0, {clip.num_frames})")
        rgb = cv2.imdecode(np.frombuffer(clip.frames[index], np.uint8), cv2.IMREAD_COLOR_RGB)
        if rgb is None or rgb.shape != (clip.height, clip.width, 3):
            got = None if rgb is None else rgb.shape
            raise RecordError(f"{clip.source_id}: frame {index} does not decode to "
                              f"({clip.height}, {clip.width}, 3) (got {got})")
        out[slot] = rgb
    return out


def _pack(array: np.ndarray, dtype, compress: bool) -> dict:
    array = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    if compress:
        planes = array.reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize).T
        data = zlib.compress(np.ascontiguousarray(planes).tobytes(), 1)
    else:
        data = array.tobytes()
    return {"dtype": array.dtype.str, "shape": list(array.shape), "zlib": compress, "data": data}


@dataclasses.dataclass(frozen=True)
class _PackedArray:
    """One stored array (``{"dtype", "shape", "zlib", "data"}``) with its metadata parsed, data untouched."""

    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool
    data: bytes

    @classmethod
    def parse(cls, packed, key: str, where: str) -> _PackedArray:
        try:
            dtype = np.dtype(packed["dtype"])
            shape = tuple(int(s) for s in packed["shape"])
            compressed, data = bool(packed["zlib"]), packed["data"]
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"{where}: field {key!r} cannot be decoded: {err}") from err
        if not shape or min(shape) < 0 or not isinstance(data, bytes):
            raise RecordError(f"{where}: field {key!r} cannot be decoded: shape {shape}, data {type(data)}")
        return cls(key, dtype, shape, compressed, data)

    def all_rows(self, where: str) -> np.ndarray:
        """The whole array, in native byte order."""
        return self.rows(np.arange(self.shape[0]), where)

    def rows(self, indices, where: str) -> np.ndarray:
        """Entries `indices` along the first axis, in native byte order. A compressed array is inflated
        only up to the last byte those entries need: its byte planes lie one after another, each holding
        the entries in order, so entry t of plane k starts at (k * count + t) * entry_size."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        count, entry_size, itemsize = self.shape[0], math.prod(self.shape[1:]), self.dtype.itemsize
        if indices.size and (indices.min() < 0 or indices.max() >= count):
            raise RecordError(f"{where}: {self.key} index out of range [0, {count}): {indices.tolist()}")
        try:
            if not self.compressed:
                if len(self.data) != count * entry_size * itemsize:
                    raise ValueError(f"{len(self.data)} bytes for shape {self.shape} of {self.dtype}")
                entries = np.frombuffer(self.data, self.dtype).reshape(self.shape)[indices]
            else:
                entries = self._inflate_rows(indices, count, entry_size, itemsize)
        except (ValueError, zlib.error) as err:
            raise RecordError(f"{where}: field {self.key!r} cannot be decoded: {err}") from err
        return entries.astype(self.dtype.newbyteorder("="), copy=False)

    def _inflate_rows(self, indices: np.ndarray, count: int, entry_size: int, itemsize: int) -> np.ndarray:
        end = int(indices.max()) + 1 if indices.size else 0
        total = count * entry_size * itemsize
        needed = ((itemsize - 1) * count + end) * entry_size if indices.size else 0
        if needed == total:
            planes = zlib.decompress(self.data)
        else:
            planes = zlib.decompressobj().decompress(self.data, needed) if needed else b""
        if len(planes) != needed:
            raise ValueError(f"inflates to {len(planes)} bytes, expected {needed} of {total}")
        planes = np.frombuffer(planes, np.uint8)
        interleaved = np.empty((indices.size, entry_size, itemsize), np.uint8)
        for k in range(itemsize):
            start = k * count * entry_size
            interleaved[:, :, k] = planes[start:start + end * entry_size].reshape(end, entry_size)[indices]
        return interleaved.view(self.dtype).reshape((indices.size,) + self.shape[1:])


def _check_clip(clip: Clip, where: str) -> None:
    """Shape and range checks of a clip about to be encoded."""
    labels = [getattr(clip, k) for k in _LABEL_KEYS]
    if any(x is not None for x in labels) and any(x is None for x in labels):
        raise RecordError(f"{where}: label fields {_LABEL_KEYS} must be all set or all None")
    shapes = {k: np.shape(getattr(clip, k)) for k in _ARRAY_KEYS if getattr(clip, k) is not None}
    _check_shapes(where, len(clip.frames), clip.height, clip.width, np.asarray(clip.flow_pairs), shapes)


def _check_shapes(where: str, t: int, h: int, w: int, flow_pairs: np.ndarray, shapes: dict) -> None:
    """Shape and range checks shared by the writer and the reader; `shapes` maps the array fields present
    (labels all or none) to their shapes."""
    p = flow_pairs.shape[0] if flow_pairs.ndim == 2 else -1
    expected = {"timestamps": (t,), "flow_pairs": (p, 2), "flow_coords": (p, h, w, 2), "flow_mask": (p, h, w)}
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
