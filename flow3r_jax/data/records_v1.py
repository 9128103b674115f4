"""Reader of version 1 clip records (the first layout; flow3r_jax/data/records.py has the current one).
Shards of version 1 stay readable and decode to the same values as later versions.

Byte layout of a version 1 record::

    magic    4 bytes  b"F3RC"
    version  uint16 little-endian   (1)
    crc32    uint32 little-endian   (zlib.crc32 of the body)
    body     msgpack map

The body holds the fields of later versions (same names, dtypes and quantization) with ``frames`` a list of
T images and every array a map ``{"dtype", "shape", "zlib", "data"}`` of little-endian bytes. When
``zlib`` is true (depth, valid_mask, flow_coords, flow_mask) the bytes of the whole (T, ...) or (P, ...)
array are split into byte planes (all first bytes of every element, then all second bytes, ...) and
zlib-compressed as one stream; flow_coords is (P, H, W, 2) interleaved, delta-coded along W.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib

import numpy as np

from flow3r_jax.data.records import (
    ARRAY_KEYS,
    LABEL_KEYS,
    ClipRecord,
    FieldReader,
    RecordError,
    check_shapes,
    undelta_flow,
    unpack_map,
)

_HEADER = struct.Struct("<4sHI")
_BODY_KEYS = ("source_id", "height", "width", "timestamps", "frames", "normal_ok", "flow_pairs",
              "flow_coords", "flow_mask")


def open_clip_v1(data: bytes, where: str) -> ClipRecord:
    """Version 1 record bytes -> ClipRecord; RecordError naming `where` on any damage."""
    if len(data) < _HEADER.size:
        raise RecordError(f"{where}: truncated record ({len(data)} bytes, header needs {_HEADER.size})")
    _, version, crc = _HEADER.unpack_from(data)
    payload = memoryview(data)[_HEADER.size:]
    if zlib.crc32(payload) != crc:
        raise RecordError(f"{where}: checksum mismatch (record truncated or corrupted)")
    body = unpack_map(payload, _BODY_KEYS, where, "record body")
    present_labels = [k for k in LABEL_KEYS if k in body]
    if present_labels and len(present_labels) != len(LABEL_KEYS):
        raise RecordError(f"{where}: label keys must be all present or all absent, got {present_labels}")
    arrays = {k: PackedArray.parse(body[k], k, where) for k in ARRAY_KEYS if k in body}
    small = {k: arrays.pop(k).all_rows(where) if k in arrays else None
             for k in ("timestamps", "flow_pairs", "intrinsics", "camera_poses")}
    shapes = {k: np.shape(v) for k, v in small.items() if v is not None}
    shapes.update({k: a.shape for k, a in arrays.items()})
    check_shapes(where, len(body["frames"]), body["height"], body["width"], small["flow_pairs"], shapes)
    fields = {k: _PackedField(a, where) for k, a in arrays.items()}
    return ClipRecord(where=where, version=version, source_id=body["source_id"], frames=list(body["frames"]),
                      height=body["height"], width=body["width"], normal_ok=bool(body["normal_ok"]),
                      fields=fields, **small)


class _PackedField(FieldReader):
    """A version 1 field; flow_coords comes back summed along W (quantized NDC, like later versions)."""

    def __init__(self, packed: PackedArray, where: str):
        self._packed, self._where = packed, where

    def entries(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        rows = self._packed.rows(indices, self._where)
        if self._packed.key == "flow_coords":
            rows = undelta_flow(np.ascontiguousarray(rows))
        if out is None:
            return rows
        out[...] = rows
        return out


@dataclasses.dataclass(frozen=True)
class PackedArray:
    """One stored array (``{"dtype", "shape", "zlib", "data"}``) with its metadata parsed, data untouched."""

    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool
    data: bytes

    @classmethod
    def parse(cls, packed, key: str, where: str) -> PackedArray:
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
