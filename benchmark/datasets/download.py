"""Downloading and unpacking dataset archives: pinned checksums, atomic files, safe extraction.

:func:`fetch_archive` downloads ``url`` into ``<cache>/datasets/<name>/downloads/`` through a
temporary file and checks it against a pinned checksum (``"md5:<hex>"`` or ``"sha256:<hex>"``;
md5 where the publisher or a widely used loader pins md5, because that is the value that can
be checked against a published one). A mismatch deletes the file and raises a
:class:`~xaibench.errors.UserError` that says so. :func:`extract_archive` unpacks a tar or
zip archive into a temporary sibling directory, refusing members that would land outside it
(absolute paths, ``..``, links, devices), and renames it into place only when everything was
written, so a failed or interrupted extraction never leaves a half-filled dataset behind.

``url`` may be any URL that :func:`urllib.request.urlopen` accepts, ``file://`` included
(tests serve archives that way). ``$XAIBENCH_DATA_MIRROR`` replaces the host part of every
dataset URL by a base URL of the user's choice (the file name is appended), for
institutional mirrors; the pinned checksums still apply.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional

from ..errors import UserError
from ..io import cache_dir as resolve_cache_dir

MIRROR_ENV = "XAIBENCH_DATA_MIRROR"
_CHUNK = 1 << 20


def dataset_cache(name: str, cache_dir: Optional[str] = None) -> Path:
    """``<cache>/datasets/<name>`` (created)."""
    path = resolve_cache_dir(cache_dir) / "datasets" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_checksum(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, digest = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not digest:
        raise ValueError(f"checksum must be 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    return algorithm, digest.lower()


def mirrored(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.rstrip("/").rsplit("/", 1)[-1]


def download(url: str, dest: Path, checksum: str, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (atomically) and verify ``checksum``; reuse a verified file.

    A file whose checksum does not match is deleted and a :class:`UserError` is raised."""
    algorithm, expected = _parse_checksum(checksum)
    dest = Path(dest)
    if dest.exists():
        if file_checksum(dest, algorithm) == expected:
            return dest
        dest.unlink()  # a stale or damaged earlier download: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = mirrored(url)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise UserError(
                    f"could not download {url}: {exc}. Check the network connection, or "
                    f"download the file yourself and pass --data-root"
                ) from exc
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                from tqdm.auto import tqdm

                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {dest.name}",
                    disable=not progress,
                    leave=False,
                    file=sys.stderr,
                ) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        actual = h.hexdigest()
        if actual != expected:
            raise UserError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected {algorithm} "
                f"{expected}, got {actual}. The file was removed and nothing was extracted; "
                f"run the command again, or download the dataset yourself and pass --data-root"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UserError(
            f"refusing to extract archive member '{name}': it points outside the target directory"
        )
    return path


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar:
            rel = _safe_relative(member.name)
            if member.isdir():
                (target / rel).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():  # links, devices, fifos: never needed by an image dataset
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, _CHUNK)


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            rel = _safe_relative(info.filename)
            if info.is_dir():
                (target / rel).mkdir(parents=True, exist_ok=True)
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, _CHUNK)


def extract_archive(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` (tar, tar.gz/tgz, zip) so that its members end up under ``target``.

    Extraction goes into a temporary sibling first and is renamed onto ``target`` when it is
    complete; on any error the temporary directory is removed."""
    target = Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        else:
            try:
                _extract_tar(archive, tmp)
            except tarfile.TarError as exc:
                raise UserError(
                    f"cannot unpack {archive}: {exc}. The archive was removed; run the command "
                    f"again to download it anew"
                ) from exc
        os.replace(tmp, target)
    except UserError:
        shutil.rmtree(tmp, ignore_errors=True)
        Path(archive).unlink(missing_ok=True)  # damaged or hostile: do not reuse it
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def fetch_archive(
    name: str,
    url: str,
    checksum: str,
    *,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Download (if needed) and extract one archive of dataset ``name``; return the directory
    that holds its members (``<cache>/datasets/<name>/<archive stem>``)."""
    root = dataset_cache(name, cache_dir)
    filename = url.rstrip("/").rsplit("/", 1)[-1]
    stem = filename
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    target = root / stem
    if target.exists():
        return target
    archive = download(url, root / "downloads" / filename, checksum, progress=progress)
    if progress:
        print(f"extracting {filename} → {target}", file=sys.stderr)
    extract_archive(archive, target)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return target
