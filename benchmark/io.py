"""Files: the cache directory, content hashes, and atomic writes (temp file + rename)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .errors import UserError

CACHE_ENV = "XAIBENCH_CACHE"


def cache_path(override: Optional[str | os.PathLike] = None) -> Path:
    """``--cache-dir``, else ``$XAIBENCH_CACHE``, else ``$XDG_CACHE_HOME/xaibench`` (~/.cache/xaibench)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xaibench"


def cache_dir(override: Optional[str | os.PathLike] = None) -> Path:
    """The cache directory (see :func:`cache_path`), created if missing."""
    path = cache_path(override)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if torch.is_tensor(obj):
        return obj.tolist()
    return obj


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hex digest of a JSON-able object, independent of dict order."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


_CONTENT_HASHES: dict = {}


def content_hash(path: str | os.PathLike) -> str:
    """sha256 (64 hex) of a file's content, computed once per process for an unchanged file
    (memoised by path, size and modification time)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _CONTENT_HASHES:
        _CONTENT_HASHES[key] = file_hash(path, 64)
    return _CONTENT_HASHES[key]


def tensor_hash(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex) of tensors' dtypes, shapes and contents."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of a module's parameters and buffers, in state-dict order: identical weights
    give identical fingerprints (unlike a hash of a ``torch.save`` file, which embeds a random id)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if t.numel()
            else b""
        )
    return h.hexdigest()[:16]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, w)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(obj), indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str | os.PathLike, frame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: checkpoints hold tensors and plain data only."""
    return torch.load(path, map_location=map_location, weights_only=True)


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a directory this process can write into (created if missing), else a one-line
    :class:`~xaibench.errors.UserError` naming ``what`` (e.g. ``--out``)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory: pass a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{what} {path} is not writable ({exc.strerror or exc}): pass a directory you can write to"
        )
    return path


@contextlib.contextmanager
def lock(directory: str | os.PathLike, what: str = "this cache entry"):
    """Exclusive cross-process lock on ``directory`` (``filelock``, an OS-level lock on
    ``<directory>/.lock``): two processes never build the same entry at once. The operating
    system releases the lock when its holder dies, so a crashed process never blocks others.
    Waiting is announced once."""
    import logging

    from filelock import FileLock, Timeout

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    handle = FileLock(str(path / ".lock"))
    try:
        handle.acquire(timeout=0)
    except Timeout:
        logging.getLogger(__name__).warning(f"waiting for another process that is preparing {what} ({path})")
        handle.acquire()
    try:
        yield path
    finally:
        handle.release()
