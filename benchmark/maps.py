"""Saliency maps on disk: one portable ``.npz`` file per method.

Format (``numpy.savez``; written by ``xaibench run --save-maps``, read by ``xaibench evaluate``):

=========== ===================== =================================================================
key         array                 meaning
=========== ===================== =================================================================
``maps``    float32 (N, h, w)     raw, signed maps; (h, w) = the model's input size (``pixel``)
                                  or its patch grid (``patch``)
``ids``     str (N,)              image ids of the dataset (``xaibench`` prints them in scores.csv)
``level``   str ()                ``"pixel"`` or ``"patch"``
``targets`` int64 (N,), optional  the class each map explains (default: the model's prediction)
``meta``    str (), optional      JSON: method, settings, and the identity of the dataset and
                                  model the maps were made for (checked by ``evaluate``)
``extra_*`` optional              maps of other classes (``extra_maps`` float32 (K, h, w),
                                  ``extra_ids`` str (K,), ``extra_targets`` int64 (K,)): what a
                                  metric that explains a second label (completeness) uses; without
                                  them such a metric uses the one map of each image for every class
=========== ===================== =================================================================

Only these keys are read; a file is loaded with ``allow_pickle=False`` (no code, no objects).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .attribution import LEVELS
from .errors import UserError
from .io import atomic_write

FORMAT = "xaibench-maps/1"


@dataclass
class MapFile:
    maps: torch.Tensor  # (N, h, w) float32
    ids: List[str]
    level: str
    targets: Optional[torch.Tensor] = None  # (N,) int64
    meta: dict = field(default_factory=dict)
    extra_maps: Optional[torch.Tensor] = None  # (K, h, w): maps of other classes
    extra_ids: List[str] = field(default_factory=list)
    extra_targets: Optional[torch.Tensor] = None  # (K,)


def write_maps(path: str | Path, maps: MapFile) -> Path:
    arrays = {
        "maps": maps.maps.detach().cpu().float().numpy(),
        "ids": np.array(maps.ids, dtype=str),
        "level": np.array(maps.level),
        "meta": np.array(json.dumps({"format": FORMAT, **maps.meta}, sort_keys=True, default=str)),
    }
    if maps.targets is not None:
        arrays["targets"] = np.asarray(maps.targets, np.int64)
    if maps.extra_ids:
        arrays["extra_maps"] = maps.extra_maps.detach().cpu().float().numpy()
        arrays["extra_ids"] = np.array(maps.extra_ids, dtype=str)
        arrays["extra_targets"] = np.asarray(maps.extra_targets, np.int64)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def read_maps(path: str | Path) -> MapFile:
    """Read and check one map file; any problem is a one-line :class:`UserError` naming the file."""
    path = Path(path)
    where = f"maps file {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{where} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("maps", "ids", "level") if k not in arrays]
    if missing:
        raise UserError(f"{where} lacks the array(s) {', '.join(missing)}; it needs maps, ids and level")
    maps, ids, level = arrays["maps"], arrays["ids"], arrays["level"]
    if maps.dtype.kind != "f":
        raise UserError(f"{where}: maps must be floating point, got dtype {maps.dtype}")
    if maps.ndim != 3:
        raise UserError(f"{where}: maps must be (N, h, w), got shape {tuple(maps.shape)}")
    if ids.ndim != 1 or ids.dtype.kind not in "US" or len(ids) != len(maps):
        raise UserError(
            f"{where}: ids must be {len(maps)} strings (one per map), got {ids.dtype} {ids.shape}"
        )
    if len(set(ids.tolist())) != len(ids):
        raise UserError(f"{where}: ids repeat (each image must appear once)")
    level = str(level.item()) if level.ndim == 0 else ""
    if level not in LEVELS:
        raise UserError(f"{where}: level must be one of {', '.join(LEVELS)}, got {level!r}")
    bad = ~np.isfinite(maps).reshape(len(maps), -1).all(1)
    if bad.any():
        first = ", ".join(ids[bad][:3].tolist())
        raise UserError(f"{where}: {int(bad.sum())} map(s) contain NaN or infinite values (e.g. {first})")
    targets = None
    if "targets" in arrays:
        t = arrays["targets"]
        if t.dtype.kind not in "iu" or t.shape != (len(maps),):
            raise UserError(f"{where}: targets must be {len(maps)} integers, got {t.dtype} {t.shape}")
        targets = torch.from_numpy(t.astype(np.int64))
    extra = _extra(arrays, maps.shape[1:], where)
    meta = {}
    if "meta" in arrays:
        try:
            meta = json.loads(str(arrays["meta"].item()))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where}: meta is not a JSON text ({exc})") from exc
    return MapFile(
        torch.from_numpy(maps.astype(np.float32)), [str(i) for i in ids], level, targets, meta, *extra
    )


def _extra(arrays: dict, shape: tuple, where: str):
    """(maps, ids, targets) of the optional maps of other classes, checked."""
    keys = ("extra_maps", "extra_ids", "extra_targets")
    present = [k for k in keys if k in arrays]
    if not present:
        return None, [], None
    if len(present) < 3:
        raise UserError(f"{where}: {', '.join(keys)} go together; it has only {', '.join(present)}")
    maps, ids, targets = (arrays[k] for k in keys)
    k = len(ids)
    if (
        maps.dtype.kind != "f"
        or maps.shape != (k, *shape)
        or targets.shape != (k,)
        or targets.dtype.kind not in "iu"
    ):
        raise UserError(
            f"{where}: extra_maps must be ({k}, {shape[0]}, {shape[1]}) floats with {k} integer targets"
        )
    if not np.isfinite(maps).all():
        raise UserError(f"{where}: extra_maps contain NaN or infinite values")
    return (
        torch.from_numpy(maps.astype(np.float32)),
        [str(i) for i in ids],
        torch.from_numpy(targets.astype(np.int64)),
    )
