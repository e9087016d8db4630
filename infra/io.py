"""Small file helpers every stage uses: atomic writes and JSONL reading with file:line errors.

Stages share a filesystem with jobs that may be killed at any moment (time limit, requeue), so a reader must
never see a half-written file: everything is written to a temporary name in the same folder, then renamed
(files and whole directories alike). The temporary names come from `tempfile`, which creates them private
(0600 files, 0700 directories); before the rename they get the modes an ordinary write would have (0666/0777
less the umask), so that other users of a shared filesystem (a job's other nodes, a colleague reading the run)
can read the result. Only the standard library is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: str | Path) -> None:
    """Flush a file or directory to disk (a directory: the renames in it); where that is refused, nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name next to `path` for writers that want a name (matplotlib's savefig, torch.save):
    when the block ends without error the file is synced, given the shared-filesystem mode and renamed onto
    `path`; on error it is removed. The name ends in `path`'s suffix (savefig picks the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and an atomic rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One compact JSON document per line (the dataset's own format)."""
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def replace_directory(new: str | Path, path: str | Path, old: str | Path | None = None) -> Path:
    """Rename the complete directory `new` to `path`. An existing `path` is first renamed to `old` (default
    `.<name>.old-<pid>` beside it) and removed afterwards, so a reader never meets a moment without a complete
    `path`; a crash between the two renames leaves `old`, which its owner may rename back."""
    new, path = Path(new), Path(path)
    if path.exists():
        old = Path(old) if old is not None else path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, path)
    _fsync_path(path.parent)
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary directory next to `path` to fill (a model export, a tokenizer): when the block ends without
    error it gets the shared-filesystem mode and replaces `path` (`replace_directory`); on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class JsonlError(ValueError):
    """A JSONL line that is not a JSON object; the message names file and line."""


def _parse_line(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise JsonlError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise JsonlError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, row) for each non-empty line; bad JSON raises JsonlError naming file:line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, _parse_line(path, number, line)


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def read_live_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file a running job appends to (metrics.jsonl): a missing file is no rows yet, and a line
    that is not a JSON object (the half-written last line, a line torn by a killed job) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(_parse_line(path, number, line))
            except JsonlError:
                continue
    return rows
