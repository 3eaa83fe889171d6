"""Verified artifacts: directories whose files are checked against a manifest when they are loaded.

Everything xaibench reuses (a trained classifier, a surrogate, an explainer, a finished part of a
run, an extracted dataset) is a directory with a ``manifest.json`` written *last*, atomically:

    {"files": {"model.pt": {"sha256": "...", "bytes": 1234}, ...}, "meta": {...}}

An artifact is valid only if its manifest exists and every listed file has the recorded size and
sha256. :func:`verify` says what is wrong otherwise, so a damaged, truncated or half-written
artifact is never used: :func:`cached` rebuilds it after one warning line. Files under
construction are written through :func:`xaibench.io.atomic_write`; leftovers of a killed writer
(``.*.tmp``) are removed by :func:`remove_orphans` once the directory's lock is held.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, TypeVar

from .io import file_hash, lock, read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
T = TypeVar("T")


def digest(path: str | os.PathLike) -> dict:
    """``{"sha256": ..., "bytes": ...}`` of one file."""
    return {"sha256": file_hash(path, 64), "bytes": os.path.getsize(path)}


def write_manifest(directory: str | os.PathLike, files: Iterable[str], meta: Optional[dict] = None) -> dict:
    """Hash ``files`` (names relative to ``directory``) and write the manifest; returns it."""
    directory = Path(directory)
    manifest = {"files": {name: digest(directory / name) for name in sorted(files)}, "meta": meta or {}}
    write_json(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike) -> Optional[dict]:
    """The manifest, or None when it is missing or unreadable."""
    path = Path(directory) / MANIFEST
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def verify(directory: str | os.PathLike) -> Optional[str]:
    """None if the artifact in ``directory`` is complete and intact, else what is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return "no readable manifest.json (unfinished or damaged)"
    for name, want in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if os.path.getsize(path) != want.get("bytes"):
            return f"{name} has {os.path.getsize(path)} bytes, the manifest says {want.get('bytes')}"
        if file_hash(path, 64) != want.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def meta(directory: str | os.PathLike) -> dict:
    """The ``meta`` of a verified artifact's manifest."""
    manifest = read_manifest(directory)
    return dict(manifest.get("meta", {})) if manifest else {}


def remove_orphans(directory: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left behind (``.*.tmp``, ``.*.partial``); returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for path in list(directory.rglob(".*.tmp")) + list(directory.rglob(".*.partial")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def clear(directory: str | os.PathLike, keep: Iterable[str] = (".lock",)) -> None:
    """Remove everything in ``directory`` except ``keep`` (the lock file by default)."""
    keep = set(keep)
    for path in Path(directory).iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def cached(
    directory: str | os.PathLike,
    what: str,
    build: Callable[[Path], Dict[str, object] | None],
    load: Callable[[Path], T],
    *,
    files: Optional[Callable[[Path], Iterable[str]]] = None,
    resumable: Iterable[str] = (),
) -> T:
    """Load the artifact in ``directory``, building it first if it is missing or damaged.

    Under the directory's lock: if :func:`verify` passes, ``load(directory)`` is returned. Otherwise
    (one warning line when something damaged was there) the directory is cleared, except the
    ``resumable`` files (e.g. a training checkpoint, which carries its own check), and
    ``build(directory)`` writes the artifact's files and returns the manifest's ``meta``; the
    manifest then lists ``files(directory)`` (default: every file ``build`` left, lock excluded).
    A ``load`` that raises on a verified artifact (e.g. it no longer fits the code) counts as
    damaged once: the artifact is rebuilt and loaded again.
    """
    directory = Path(directory)
    with lock(directory, what):
        remove_orphans(directory)
        problem = verify(directory)
        if problem is None:
            try:
                return load(directory)
            except Exception as exc:  # noqa: BLE001  (any failure to load means: rebuild it)
                problem = f"it could not be loaded ({type(exc).__name__}: {exc})"
        leftovers = [p.name for p in directory.iterdir() if p.name not in {".lock", *resumable}]
        if leftovers:
            log.warning(f"{what} in {directory} is unusable ({problem}): recomputing it")
        clear(directory, keep={".lock", *resumable})
        meta_out = build(directory) or {}
        names = (
            list(files(directory))
            if files is not None
            else [p.name for p in directory.iterdir() if p.is_file() and p.name not in (".lock", MANIFEST)]
        )
        write_manifest(directory, names, meta_out)
        return load(directory)
