"""Random access to the clip records of a set of ArrayRecord shards, naming every record by file#index.

`ShardRecords` is a Grain random-access data source over `grain.sources.ArrayRecordDataSource`. Reading
a record never raises: a record that cannot be read comes back as a `RawRecord` with `data=None` and the
reader's error, so the pipeline decides between failing loudly and a counted skip.

The array_record reader opens local files only: shards in a bucket are read through a mounted path
(e.g. gcsfuse); a URL is refused before any access, with that advice (`files.require_local`).
"""

from __future__ import annotations

import bisect
import glob
import itertools
import os
import pathlib
from collections.abc import Iterator
from typing import NamedTuple

import grain
from array_record.python import array_record_module

from flow3r_jax.data.records import Clip, RecordError, decode_clip
from flow3r_jax.files import require_local

SHARD_SUFFIX = ".array_record"
SHARDS = "ArrayRecord shards (read by array_record through Grain)"


class RawRecord(NamedTuple):
    """One stored record: its index in the source, "<file>#<index in file>", bytes (None if unreadable)."""

    index: int
    where: str
    data: bytes | None
    error: str | None


def find_shards(path: str) -> list[str]:
    """Sorted shard files of `path`: a directory (every *.array_record inside) or a glob pattern.

    Raises ValueError for a URL (module docstring) and FileNotFoundError when nothing matches.
    """
    require_local(path, SHARDS)
    pattern = os.path.join(path, "*" + SHARD_SUFFIX) if os.path.isdir(path) else path
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise FileNotFoundError(f"no ArrayRecord shards match {path!r} (looked for {pattern!r})")
    return paths


def count_records(path: str) -> int:
    """Number of records of one shard; raises ValueError naming the file when it cannot be opened."""
    try:
        reader = array_record_module.ArrayRecordReader(path)
        try:
            return reader.num_records()
        finally:
            reader.close()
    except Exception as err:  # the reader raises bare RuntimeErrors, often without a message
        raise ValueError(f"{path}: cannot open ArrayRecord shard (truncated or corrupt?): "
                         f"{type(err).__name__} {err}") from err


class ShardRecords(grain.sources.RandomAccessDataSource):
    """The records of `paths` in order; element i is a `RawRecord` (index i modulo the length)."""

    def __init__(self, paths: list[str]):
        self._paths = [require_local(p, SHARDS) for p in paths]
        self._counts = [count_records(p) for p in self._paths]
        self._ends = list(itertools.accumulate(self._counts))
        self._length = self._ends[-1] if self._ends else 0
        if self._length == 0:
            raise ValueError(f"the shards {self._paths} hold no records")
        self._source = grain.sources.ArrayRecordDataSource(
            [f"{p}[0:{n}]" for p, n in zip(self._paths, self._counts, strict=True) if n])

    def __len__(self) -> int:
        return self._length

    def where(self, index: int) -> str:
        """"<shard file>#<index within that file>" of record `index`."""
        index %= self._length
        shard = bisect.bisect_right(self._ends, index)
        return f"{self._paths[shard]}#{index - self._ends[shard] + self._counts[shard]}"

    def __getitem__(self, index: int) -> RawRecord:
        index = int(index) % self._length
        try:
            return RawRecord(index, self.where(index), self._source[index], None)
        except Exception as err:  # the reader raises bare RuntimeErrors for corrupt chunks
            return RawRecord(index, self.where(index), None, f"{type(err).__name__}: {err}")

    def __repr__(self) -> str:
        return f"ShardRecords({len(self._paths)} shards, {self._length} records)"


def read_clips(path) -> Iterator[Clip]:
    """Decode every record of one shard; RecordError names "<shard file>#<index>"."""
    path = pathlib.Path(require_local(path, SHARDS))
    try:
        reader = array_record_module.ArrayRecordReader(str(path))
    except Exception as err:  # the reader raises a bare RuntimeError/ValueError on a damaged file
        raise RecordError(f"{path.name}: cannot open shard: {err}") from err
    try:
        for index in range(reader.num_records()):
            try:
                data = reader.read([index])[0]
            except Exception as err:
                raise RecordError(f"{path.name}#{index}: cannot read record: {err}") from err
            yield decode_clip(data, f"{path.name}#{index}")
    except BaseException:
        _close_quietly(reader)
        raise
    try:
        reader.close()
    except Exception as err:
        raise RecordError(f"{path.name}: corrupted shard: {err}") from err


def _close_quietly(reader) -> None:
    """Close a reader whose shard already failed; the first error is the one reported."""
    try:
        reader.close()
    except Exception:  # a damaged file may fail again on close; the caller is raising already
        pass
