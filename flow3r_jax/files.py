"""Writing files so that a reader never sees a half-written one.

Every writer of the project goes through `atomic_path` (files) or `atomic_directory` (folders): the
content is written under a temporary name and moved onto the final name only once it is complete. For
a local destination the temporary file sits beside it (hidden, so shard globs never match it) and
`os.replace` makes the switch atomic; for a URL destination (gs:// and other `etils.epath` schemes) the
file is written locally and then copied, which object stores publish whole.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    """True for "scheme://..." paths (gs://, s3://, ...), False for local ones."""
    return "://" in os.fspath(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a local temporary file path; when the block succeeds, the file becomes `path`.

    The temporary name keeps the destination's suffix (libraries that infer a format from it still
    work). The parent folder is created. On an exception nothing is left behind.
    """
    suffix = pathlib.PurePath(os.fspath(path)).suffix
    if is_url(path):
        fd, tmp = tempfile.mkstemp(suffix=f".tmp{suffix}")
    else:
        local = pathlib.Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=f".tmp{suffix}", dir=local.parent)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        if is_url(path):
            epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(tmp).copy(epath.Path(path), overwrite=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes text (UTF-8) or bytes to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary sibling folder of the local folder `path`; on success it is renamed to `path`.

    If `path` appeared meanwhile (another process finished the same build first), the temporary folder
    is discarded and the existing one kept. On an exception nothing is left behind.
    """
    final = pathlib.Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
