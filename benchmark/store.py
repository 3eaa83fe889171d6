"""The run store: one run directory, its identity, its parts, and every write into it.

Layout of ``<out>/<run_id>/``::

    identity.json       what the numbers depend on (see :mod:`xaibench.identity`)
    parts/<part>/       one method's (one training seed's) results, a verified artifact:
                        scores.csv, curves.csv, states.pt, preview.npz (the maps of a fixed
                        sample of images), maps.npz (every map, with --save-maps; format in
                        :mod:`xaibench.maps`), manifest.json (its key and info); a failed part
                        holds error.txt (the traceback) instead
    scores.csv          per-image scores of every method, long format
    curves.csv          mean curves
    states.pt           per-image states of dataset-level metrics
    config.json         how the run was produced (settings, versions, statuses, timings)
    leaderboard.*       aggregated tables
    manifest.json       written last: the finished run's files and their sha256

A store is opened under the directory's lock. A directory that holds a run of another identity
is never mixed with this one: it is refused (or replaced with ``overwrite``). A part is reused
only if its manifest verifies and its key (the identity's hash, the method's and the metrics'
settings) matches. Opening a run removes its final manifest, so a run interrupted after that
point reads as unfinished until the same command completes it.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd
import torch

from . import artifacts
from .errors import UserError
from .identity import differences
from .io import load_torch, lock, read_json, save_torch, stable_hash, write_csv, write_json, write_text
from .maps import MapFile, write_maps
from .seeding import derive_seed

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["dataset", "model", "method", "train_seed", "image_id", "target", "metric", "value"]
CURVE_COLUMNS = ["dataset", "model", "method", "metric", "x", "value", "n"]
PREVIEW, MAPS = "preview.npz", "maps.npz"
PART_FILES = ("scores.csv", "curves.csv", "states.pt", PREVIEW)
#: images whose maps every part keeps (for the qualitative grid and the report's image explorer)
PREVIEW_IMAGES = 16
IDENTITY = "identity.json"


def preview_rows(ids: Sequence[str], seed: int) -> List[int]:
    """Positions of the preview sample: the same images for every method of a run (a seeded
    order of the ids, first ``PREVIEW_IMAGES``), in scoring order."""
    order = sorted(range(len(ids)), key=lambda i: derive_seed(seed, "preview", ids[i]))
    return sorted(order[:PREVIEW_IMAGES])


def run_key(identity: dict) -> str:
    return stable_hash(identity, 16)


class RunStore:
    """Reads and writes of one run directory (use :func:`open_store`)."""

    def __init__(self, directory: Path, identity: dict) -> None:
        self.dir = Path(directory)
        self.identity = identity
        self.key = run_key(identity)

    # ------------------------------------------------------------------ claiming the directory
    def _claim(self, overwrite: bool) -> None:
        artifacts.remove_orphans(self.dir)
        path = self.dir / IDENTITY
        if path.exists():
            try:
                old = read_json(path)
            except (OSError, ValueError):
                old = {"unreadable": str(path)}
            if old != self.identity:
                if not overwrite:
                    diff = differences(old, self.identity)
                    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
                    raise UserError(
                        f"run directory {self.dir} holds a run with other inputs ({shown}): choose another "
                        f"--run-id, or pass --overwrite to replace it"
                    )
                log.warning(f"--overwrite: replacing the run in {self.dir}")
                artifacts.clear(self.dir)
        elif any(p.name != ".lock" for p in self.dir.iterdir()):
            if not overwrite:
                raise UserError(
                    f"{self.dir} is not empty and holds no xaibench run: choose another --run-id or --out, "
                    f"or pass --overwrite to replace its content"
                )
            artifacts.clear(self.dir)
        (self.dir / artifacts.MANIFEST).unlink(missing_ok=True)  # in progress until sealed again
        if not path.exists():
            write_json(path, self.identity)

    # ------------------------------------------------------------------ parts
    def part_dir(self, part: str) -> Path:
        return self.dir / "parts" / part

    def part_key(self, method_settings: dict, metric_settings: Sequence[dict]) -> str:
        return stable_hash({"run": self.key, "method": method_settings, "metrics": list(metric_settings)}, 16)

    def finished_part(self, part: str, key: str, with_maps: bool = False) -> Optional[dict]:
        """The info of a finished part with this key (and all its maps, if asked), or None (a
        damaged part is reported once)."""
        d = self.part_dir(part)
        if not (d / artifacts.MANIFEST).exists():
            return None
        problem = artifacts.verify(d)
        meta = artifacts.meta(d)
        if problem is not None:
            log.warning(f"{part}: its saved results in {d} are damaged ({problem}); computing them again")
            return None
        if meta.get("key") != key or (with_maps and MAPS not in artifacts.read_manifest(d)["files"]):
            return None
        return meta.get("info", {})

    def start_part(self, part: str) -> Path:
        d = self.part_dir(part)
        d.mkdir(parents=True, exist_ok=True)
        artifacts.clear(d)
        return d

    def write_part(self, part: str, key: str, result, info: dict, maps_meta: dict, save_maps: bool) -> None:
        """Write a finished part: scores, curves, states, the preview maps (a fixed sample of
        images, for figures and reports) and, with ``save_maps``, every map (``maps.npz``)."""
        d = self.start_part(part)
        write_csv(d / "scores.csv", result.scores)
        write_csv(d / "curves.csv", result.curves)
        save_torch(d / "states.pt", {"ids": list(result.state_ids), "states": result.states})
        targets = torch.as_tensor(result.targets, dtype=torch.long)
        rows = preview_rows(result.ids, self.identity["settings"]["seed"])
        sample = MapFile(
            result.maps[rows], [result.ids[i] for i in rows], result.level, targets[rows], maps_meta
        )
        write_maps(d / PREVIEW, sample)
        files = list(PART_FILES)
        if save_maps:
            write_maps(d / MAPS, MapFile(result.maps, list(result.ids), result.level, targets, maps_meta))
            files.append(MAPS)
            log.info(f"{part}: maps saved to {d / MAPS} ({(d / MAPS).stat().st_size / 2**20:.1f} MB)")
        artifacts.write_manifest(d, files, {"key": key, "info": info})

    def write_failure(self, part: str, exc: BaseException) -> Path:
        """Keep a failed part's full traceback; the part is not reusable (no manifest)."""
        d = self.start_part(part)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return write_text(d / "error.txt", text)

    def read_part(self, part: str) -> Tuple[pd.DataFrame, pd.DataFrame, dict]:
        d = self.part_dir(part)
        scores = pd.read_csv(d / "scores.csv", dtype={"image_id": str})
        curves = pd.read_csv(d / "curves.csv")
        states = load_torch(d / "states.pt")["states"]
        return scores, curves, states

    # ------------------------------------------------------------------ the run's files
    def merge(self, entries: Sequence[Tuple[str, str, Optional[int]]], dataset: str, model: str) -> None:
        """Write scores.csv, curves.csv and states.pt from the finished parts ``entries``
        (method, part, training seed or None), in that order."""
        frames, curve_frames, states = [], [], {}
        seeds_of: Dict[str, List[Optional[int]]] = {}
        for method, part, seed in entries:
            seeds_of.setdefault(method, []).append(seed)
        for method, part, seed in entries:
            scores, curves, part_states = self.read_part(part)
            scores.insert(0, "train_seed", pd.array([seed] * len(scores), dtype="Int64"))
            for frame in (scores, curves):
                frame.insert(0, "method", method)
                frame.insert(0, "model", model)
                frame.insert(0, "dataset", dataset)
            frames.append(scores)
            curve_frames.append(curves)
            if len(seeds_of[method]) > 1:
                for name, st in part_states.items():
                    states.setdefault(method, {}).setdefault(name, {})[seed] = st
            else:
                states[method] = part_states
        scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
        write_csv(self.dir / "scores.csv", scores[SCORE_COLUMNS])
        write_csv(self.dir / "curves.csv", _pool_curves(curve_frames))
        save_torch(self.dir / "states.pt", states)

    def write_config(self, doc: dict) -> None:
        write_json(self.dir / "config.json", doc)

    def seal(self, status: str) -> None:
        """Record the finished run's files (everything but parts and the lock) and their hashes."""
        seal_run(self.dir, {"run_key": self.key, "status": status})


def _pool_curves(frames: List[pd.DataFrame]) -> pd.DataFrame:
    """Concatenated curves; a method with several parts (training seeds) gets their n-weighted mean."""
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    curves = pd.concat(frames, ignore_index=True)
    keys = ["dataset", "model", "method", "metric", "x"]
    curves["total"] = curves["value"] * curves["n"]
    pooled = curves.groupby(keys, sort=False, as_index=False)[["total", "n"]].sum()
    pooled["value"] = pooled["total"] / pooled["n"].where(pooled["n"] > 0, 1)
    return pooled[CURVE_COLUMNS]


def seal_run(directory: str | Path, meta: Optional[dict] = None) -> dict:
    """Write a finished run's manifest over its top-level files (identity, scores, config, ...)."""
    directory = Path(directory)
    files = [
        p.name for p in directory.iterdir() if p.is_file() and p.name not in (".lock", artifacts.MANIFEST)
    ]
    return artifacts.write_manifest(directory, files, meta or {})


def verify_run(directory: str | Path) -> Optional[str]:
    """None if ``directory`` holds a finished, unmodified run; else what is wrong."""
    directory = Path(directory)
    if not (directory / artifacts.MANIFEST).exists():
        if (directory / "config.json").exists():
            return "it is not finished (no manifest.json): run the command that made it again to complete it"
        return "it holds no finished run (no manifest.json)"
    problem = artifacts.verify(directory)
    if problem is not None:
        return f"its files changed after the run finished ({problem}); run it again"
    return None


@contextlib.contextmanager
def open_store(out: str | Path, run_id: str, identity: dict, overwrite: bool = False) -> Iterator[RunStore]:
    """The store of ``<out>/<run_id>``, held under its lock for the block."""
    directory = Path(out) / run_id
    with lock(directory, f"run {run_id}"):
        store = RunStore(directory, identity)
        store._claim(overwrite)
        yield store
