"""The project's one filesystem layer: naming, reading and atomically writing files, local or remote.

Paths are local paths or URLs of the schemes `etils.epath` serves (gs://, s3://, az://, hf://; through
TensorFlow's gfile when TensorFlow is installed, else through fsspec with gcsfs / s3fs / adlfs).
`as_path` turns either into an `epath.Path` (open, read_text, exists, glob, mkdir, ...). Libraries that
only open local files (ArrayRecord shards, PyAV, ...) get `local_copy` (a local copy of a remote file)
or, where copying is no answer, `require_local` (an error naming a mounted path as the fix).

Every writer of the project goes through `atomic_path` (files) or `atomic_directory` (local folders):
the content is written under a temporary name and moved onto the final name only once it is complete.
For a local destination the temporary file sits beside it (hidden, so shard globs never match it) and
`os.replace` makes the switch atomic; for a URL destination the file is written locally and then
copied, which object stores publish whole.
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


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` (local path or URL) as an `etils.epath.Path`; local paths get `~` expanded."""
    return epath.Path(path) if is_url(path) else epath.Path(os.path.expanduser(os.fspath(path)))


def absolute(path: str | os.PathLike) -> epath.Path:
    """Local paths made absolute, URLs as given (Orbax and other libraries that need one root)."""
    return as_path(path) if is_url(path) else as_path(path).resolve()


def require_local(path: str | os.PathLike, what: str) -> str:
    """`path` as a string if it is local; for a URL, ValueError naming `what` and the fix (a mounted path).

    what: the files and the library that opens only local ones, e.g. "ArrayRecord shards (read by
    array_record through Grain)". Raised before any access to the URL.
    """
    if is_url(path):
        raise ValueError(f"{os.fspath(path)}: {what} need a local or mounted path, not a URL; "
                         "mount the bucket (e.g. `gcsfuse --implicit-dirs BUCKET /mnt/BUCKET` for gs://) or copy "
                         "the files, and pass the local path (/mnt/BUCKET/...)")
    return os.fspath(path)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local file holding the content of `path`: the file itself when local, else a temporary copy
    (same suffix, removed after the block) for readers that need a local file (mmap, C libraries)."""
    if not is_url(path):
        yield pathlib.Path(as_path(path))
        return
    fd, tmp = tempfile.mkstemp(suffix=pathlib.PurePath(os.fspath(path)).suffix)
    os.close(fd)
    try:
        as_path(path).copy(epath.Path(tmp), overwrite=True)
        yield pathlib.Path(tmp)
    finally:
        os.remove(tmp)


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
            as_path(path).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(tmp).copy(as_path(path), overwrite=True)
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
    is discarded and the existing one kept. On an exception nothing is left behind. A URL is refused
    (`require_local`): folders of files are built locally and then copied or mounted.
    """
    final = pathlib.Path(require_local(path, "folders built in place (e.g. the synthetic dataset cache)"))
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
