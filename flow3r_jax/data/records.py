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

Version rule: any change to the layout or meaning of a field bumps RECORD_VERSION; `decode_clip` raises
`RecordError` for every version other than the current one, so old shards are rebuilt, never misread.
Decoding needs only numpy, msgpack and OpenCV (no TensorFlow), so Grain workers can run it.
"""

from __future__ import annotations

import dataclasses
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


def decode_clip(data: bytes, where: str = "") -> Clip:
    """Record bytes -> Clip. `where` (e.g. "train-00003-of-00008.array_record#17") names the record in
    every RecordError: unknown version, bad magic, truncation/corruption, missing keys, bad shapes."""
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
    labels = {k: _unpack(body[k], k, where) if present_labels else None for k in _LABEL_KEYS}
    if present_labels:
        labels["depth"] = labels["depth"].astype(np.float32)
        labels["valid_mask"] = labels["valid_mask"].astype(bool)
    flow_deltas = _unpack(body["flow_coords"], "flow_coords", where)
    if flow_deltas.ndim != 4:
        raise RecordError(f"{where}: flow_coords has shape {flow_deltas.shape}, expected (P, H, W, 2)")
    clip = Clip(
        source_id=body["source_id"],
        timestamps=_unpack(body["timestamps"], "timestamps", where),
        frames=list(body["frames"]),
        height=body["height"],
        width=body["width"],
        normal_ok=bool(body["normal_ok"]),
        flow_pairs=_unpack(body["flow_pairs"], "flow_pairs", where),
        flow_coords=np.cumsum(flow_deltas, axis=2, dtype=np.int16).astype(np.float32) / FLOW_NDC_SCALE,
        flow_mask=_unpack(body["flow_mask"], "flow_mask", where).astype(np.float32) / 255.0,
        **labels,
    )
    _check_clip(clip, where)
    return clip


def decode_frames(clip: Clip, indices) -> np.ndarray:
    """Decode frames `indices` of `clip` -> (n, H, W, 3) uint8 RGB. RecordError names the clip/frame."""
    out = np.empty((len(indices), clip.height, clip.width, 3), np.uint8)
    for slot, index in enumerate(indices):
        if not 0 <= index < clip.num_frames:
            raise RecordError(f"{clip.source_id}: frame index {index} out of range [0, {clip.num_frames})")
        bgr = cv2.imdecode(np.frombuffer(clip.frames[index], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != (clip.height, clip.width, 3):
            got = None if bgr is None else bgr.shape
            raise RecordError(f"{clip.source_id}: frame {index} does not decode to "
                              f"({clip.height}, {clip.width}, 3) (got {got})")
        out[slot] = bgr[..., ::-1]
    return out


def _pack(array: np.ndarray, dtype, compress: bool) -> dict:
    array = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    if compress:
        planes = array.reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize).T
        data = zlib.compress(np.ascontiguousarray(planes).tobytes(), 1)
    else:
        data = array.tobytes()
    return {"dtype": array.dtype.str, "shape": list(array.shape), "zlib": compress, "data": data}


def _unpack(packed, key: str, where: str) -> np.ndarray:
    try:
        dtype = np.dtype(packed["dtype"])
        shape = tuple(int(s) for s in packed["shape"])
        if packed["zlib"]:
            planes = np.frombuffer(zlib.decompress(packed["data"]), np.uint8).reshape(dtype.itemsize, -1)
            raw = np.ascontiguousarray(planes.T).tobytes()
        else:
            raw = packed["data"]
        return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError, ValueError, zlib.error) as err:
        raise RecordError(f"{where}: field {key!r} cannot be decoded: {err}") from err


def _check_clip(clip: Clip, where: str) -> None:
    """Shape and range checks shared by the writer and the reader."""
    t, h, w = len(clip.frames), clip.height, clip.width
    p = clip.flow_pairs.shape[0] if clip.flow_pairs.ndim == 2 else -1
    expected = {"timestamps": (clip.timestamps, (t,)), "flow_pairs": (clip.flow_pairs, (p, 2)),
                "flow_coords": (clip.flow_coords, (p, h, w, 2)), "flow_mask": (clip.flow_mask, (p, h, w))}
    labels = [getattr(clip, k) for k in _LABEL_KEYS]
    if any(x is not None for x in labels):
        if any(x is None for x in labels):
            raise RecordError(f"{where}: label fields {_LABEL_KEYS} must be all set or all None")
        expected.update({"depth": (clip.depth, (t, h, w)), "intrinsics": (clip.intrinsics, (t, 3, 3)),
                         "camera_poses": (clip.camera_poses, (t, 4, 4)),
                         "valid_mask": (clip.valid_mask, (t, h, w))})
    if t == 0 or h <= 0 or w <= 0:
        raise RecordError(f"{where}: clip needs at least one frame and a positive size, got T={t} {h}x{w}")
    for key, (array, shape) in expected.items():
        if np.shape(array) != shape:
            raise RecordError(f"{where}: {key} has shape {np.shape(array)}, expected {shape}")
    if p and (clip.flow_pairs.min() < 0 or clip.flow_pairs.max() >= t
              or np.any(clip.flow_pairs[:, 0] == clip.flow_pairs[:, 1])):
        raise RecordError(f"{where}: flow_pairs must be distinct frame indices in [0, {t}), got "
                          f"{clip.flow_pairs.tolist()}")
