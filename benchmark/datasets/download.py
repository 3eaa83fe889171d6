"""Downloading and unpacking dataset archives: pinned checksums, verified extractions.

:func:`fetch_archive` gives the directory an archive unpacks to, ``<cache>/datasets/<name>/<stem>``,
as a verified artifact (:mod:`xaibench.artifacts`): its manifest records every extracted file's
sha256, every later use checks them, and a damaged or incomplete extraction is downloaded and
unpacked again (one warning line). The archive is streamed into a temporary directory and
checked with torchvision's integrity utilities against its pinned md5 (the value torchvision's
own loaders and the publishers pin) before it is moved into ``downloads/``; a mismatch deletes it
and raises a :class:`~xaibench.errors.UserError` that says so. Extraction uses the standard
library's safe modes: tar archives through ``tarfile``'s ``data`` filter (no absolute paths,
no ``..``, no links leaving the folder, no devices), zip archives through ``ZipFile.extractall``
(which strips absolute and ``..`` components). Anything an archive cannot give — a truncated
stream, a hostile member — is one error line and the archive is discarded.

``url`` may be any URL that :func:`urllib.request.urlopen` accepts, ``file://`` included
(tests serve archives that way). ``$XAIBENCH_DATA_MIRROR`` replaces the host part of every
dataset URL by a base URL of the user's choice (the file name is appended), for
institutional mirrors; the pinned checksums still apply.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import zipfile
import zlib
from pathlib import Path
from typing import Optional

from .. import artifacts
from ..errors import UserError
from ..io import cache_dir as resolve_cache_dir
from ..io import cache_path as resolve_cache_path
from ..log import bar

log = logging.getLogger(__name__)

MIRROR_ENV = "XAIBENCH_DATA_MIRROR"
#: what a broken or hostile archive raises while it is read
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, KeyError)


def dataset_cache(name: str, cache_dir: Optional[str] = None) -> Path:
    """``<cache>/datasets/<name>`` (created)."""
    path = resolve_cache_dir(cache_dir) / "datasets" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _md5(checksum: str) -> str:
    algorithm, _, digest = checksum.partition(":")
    if algorithm != "md5" or len(digest) != 32:
        raise ValueError(f"checksum must be 'md5:<32 hex digits>', got {checksum!r}")
    return digest.lower()


def mirrored(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.rstrip("/").rsplit("/", 1)[-1]


def _transfer(url: str, dest: str) -> None:
    """Stream ``url`` into the file ``dest`` with a progress bar (any urllib URL, ``file://`` too:
    torchvision's ``download_url`` needs a Content-Length that local files and some mirrors lack)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with bar(total=total, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(dest)}") as b:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                b.update(len(chunk))


def download(url: str, dest: Path, checksum: str) -> Path:
    """``dest``, downloaded from ``url`` unless a copy with the pinned ``checksum`` is there.

    A file whose checksum does not match is deleted and a :class:`UserError` is raised."""
    from torchvision.datasets.utils import calculate_md5, check_integrity

    expected, dest = _md5(checksum), Path(dest)
    if dest.exists() and check_integrity(str(dest), expected):
        return dest
    dest.unlink(missing_ok=True)  # a stale or damaged earlier download: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = mirrored(url)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent) as tmp:
        part = os.path.join(tmp, dest.name)
        try:
            _transfer(url, part)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UserError(
                f"could not download {url}: {exc}. Check the network connection, or download the "
                f"dataset yourself and pass --data-root"
            ) from exc
        got = calculate_md5(part)
        if got != expected:
            raise UserError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected md5 {expected}, "
                f"got {got}. The file was removed and nothing was extracted; run the command again, or "
                f"download the dataset yourself and pass --data-root"
            )
        os.replace(part, dest)
    return dest


def extract_archive(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` (tar, tar.gz/tgz, zip) into ``target`` (created; what was there stays).

    Members go into a temporary sibling first and are moved into ``target`` only when everything
    was written; on any error nothing is moved, and a damaged or hostile archive is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    z.extractall(tmp)
            else:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
        except _ARCHIVE_ERRORS as exc:
            Path(archive).unlink(missing_ok=True)  # damaged or hostile: do not reuse it
            where = " (it points outside the target folder)" if isinstance(exc, tarfile.FilterError) else ""
            raise UserError(
                f"cannot unpack {Path(archive).name}{where}: {type(exc).__name__}: {exc}. The archive was "
                f"removed; run the command again to download it anew, or pass --data-root"
            ) from exc
        target.mkdir(exist_ok=True)
        for member in tmp.iterdir():
            os.replace(member, target / member.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stem(filename: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _extracted_files(directory: Path):
    return [
        str(p.relative_to(directory))
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in (".lock", artifacts.MANIFEST)
    ]


def is_fetched(name: str, url: str, cache_dir: Optional[str] = None) -> bool:
    """Whether the archive at ``url`` was extracted into the cache (its manifest is there; the
    files are verified when the dataset is loaded)."""
    filename = url.rstrip("/").rsplit("/", 1)[-1]
    return (
        artifacts.read_manifest(resolve_cache_path(cache_dir) / "datasets" / name / _stem(filename))
        is not None
    )


def fetch_archive(
    name: str, url: str, checksum: str, *, cache_dir: Optional[str] = None, keep_archive: bool = False
) -> Path:
    """The verified extraction of one archive of dataset ``name``
    (``<cache>/datasets/<name>/<archive stem>``), downloading and unpacking it when needed."""
    root = dataset_cache(name, cache_dir)
    filename = url.rstrip("/").rsplit("/", 1)[-1]

    def build(target: Path) -> dict:
        archive = download(url, root / "downloads" / filename, checksum)
        log.info(f"extracting {filename} → {target}")
        extract_archive(archive, target)
        if not keep_archive:
            archive.unlink(missing_ok=True)
        return {"url": url, "checksum": checksum}

    what = f"dataset '{name}' ({filename})"
    return artifacts.cached(root / _stem(filename), what, build, lambda d: d, files=_extracted_files)
