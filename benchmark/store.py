"""The run store: one run directory, its identity, its parts, and every write into it.

Layout of ``<out>/<run_id>/``::

    identity.json       what the numbers depend on (see :mod:`xaibench.identity`)
    parts/<part>/shard-<r>-of-<n>/
                        one method's (one training seed's) results on the batches rank r of n
                        scored (one process: shard-0-of-1), a verified artifact: scores.csv,
                        curves.csv (per-batch sums), states.pt, maps.npz, manifest.json (its
                        key and info); a failed shard holds error.txt (the traceback) instead
    scores.csv          per-image scores of every method, long format, in batch order
    curves.csv          mean curves
    states.pt           per-image states of dataset-level metrics
    maps/<part>.preview.npz
                        the maps of a fixed sample of images (the same for every method; for
                        figures and reports), and with --save-maps maps/<part>.npz (every image);
                        format in :mod:`xaibench.maps`
    config.json         how the run was produced (settings, versions, statuses, timings)
    leaderboard.*       aggregated tables
    manifest.json       written last: the finished run's files and their sha256

A store is opened under the directory's lock by the process (rank 0) that merges. A directory
that holds a run of another identity is never mixed with this one: it is refused (or replaced
with ``overwrite``). A shard is reused only if its manifest verifies and its key (the identity's
hash, the method's and the metrics' settings, the shard) matches. Claiming a run removes its
final manifest, so a run interrupted after that reads as unfinished until the same command
completes it. Merging adds the shards' batches in batch order, so the files are byte-identical
whatever the number of ranks.
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
from .maps import MapFile, read_maps, write_maps
from .seeding import derive_seed

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["dataset", "model", "method", "train_seed", "image_id", "target", "metric", "value"]
CURVE_COLUMNS = ["dataset", "model", "method", "metric", "x", "value", "n"]
PART_FILES = ("scores.csv", "curves.csv", "states.pt", "maps.npz")
#: images whose maps every run keeps (for the qualitative grid and the report's image explorer)
PREVIEW_IMAGES = 16
IDENTITY = "identity.json"


def preview_ids(ids: Sequence[str], seed: int) -> set:
    """The preview sample: the same images for every method of a run (the first
    ``PREVIEW_IMAGES`` of a seeded order of the scored ids)."""
    return set(sorted(ids, key=lambda i: derive_seed(seed, "preview", i))[:PREVIEW_IMAGES])


def preview_path(run_dir: str | Path, part: str) -> Path:
    """The preview maps of a part (a method, or one training seed of it) of a finished run."""
    return Path(run_dir) / "maps" / f"{part}.preview.npz"


def maps_path(run_dir: str | Path, part: str) -> Path:
    """Every map of a part of a finished run (written with --save-maps)."""
    return Path(run_dir) / "maps" / f"{part}.npz"


def run_key(identity: dict) -> str:
    return stable_hash(identity, 16)


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank}-of-{world}"


class RunStore:
    """Reads and writes of one run directory (open it with :func:`open_store` or :func:`attach`)."""

    def __init__(self, directory: Path, identity: dict, rank: int = 0, world: int = 1) -> None:
        self.dir = Path(directory)
        self.identity = identity
        self.key = run_key(identity)
        self.rank, self.world = rank, world

    # ------------------------------------------------------------------ claiming the directory
    def claim(self, overwrite: bool) -> None:
        """Make the directory this run's (refusing one of other inputs unless ``overwrite``)."""
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

    # ------------------------------------------------------------------ this rank's shards
    def shard_dir(self, part: str, rank: Optional[int] = None) -> Path:
        return self.dir / "parts" / part / shard_name(self.rank if rank is None else rank, self.world)

    def part_key(self, method_settings: dict, metric_settings: Sequence[dict]) -> str:
        shard = {"rank": self.rank, "world": self.world}
        return stable_hash(
            {"run": self.key, "method": method_settings, "metrics": list(metric_settings), **shard}, 16
        )

    def finished(self, part: str, key: str, with_maps: bool = False) -> Optional[dict]:
        """The info of this rank's finished shard with this key, or None (damage is reported once)."""
        d = self.shard_dir(part)
        if not (d / artifacts.MANIFEST).exists():
            return None
        problem = artifacts.verify(d)
        meta = artifacts.meta(d)
        if problem is not None:
            log.warning(f"{part}: its saved results in {d} are damaged ({problem}); computing them again")
            return None
        if meta.get("key") != key or (with_maps and not meta.get("all_maps")):
            return None
        return meta.get("info", {})

    def _fresh(self, part: str) -> Path:
        d = self.shard_dir(part)
        d.mkdir(parents=True, exist_ok=True)
        artifacts.clear(d)
        return d

    def write(self, part: str, key: str, result, info: dict, maps_meta: dict, keep: set) -> None:
        """This rank's finished shard: scores, per-batch curve sums, states, and the maps of the
        images in ``keep`` (the preview sample, or every image with --save-maps)."""
        d = self._fresh(part)
        write_csv(d / "scores.csv", result.scores)
        write_csv(d / "curves.csv", result.curves)
        save_torch(
            d / "states.pt",
            {"ids": result.state_ids, "batches": result.state_batches, "states": result.states},
        )
        rows = [i for i, image_id in enumerate(result.ids) if image_id in keep]
        targets = torch.as_tensor(result.targets, dtype=torch.long)[rows]
        extra = [e for e in result.extra if e[0] in keep]
        meta = {
            **maps_meta,
            "batches": [result.batches[i] for i in rows],
            "extra_batches": [e[3] for e in extra],
        }
        maps = MapFile(result.maps[rows], [result.ids[i] for i in rows], result.level, targets, meta)
        if extra:
            maps.extra_maps = torch.stack([e[2] for e in extra])
            maps.extra_ids = [e[0] for e in extra]
            maps.extra_targets = torch.tensor([e[1] for e in extra])
        write_maps(d / "maps.npz", maps)
        all_maps = len(rows) == len(result.ids)
        artifacts.write_manifest(d, PART_FILES, {"key": key, "info": info, "all_maps": all_maps})

    def write_failure(self, part: str, exc: BaseException) -> Path:
        """Keep a failed shard's full traceback; it is not reusable (no manifest)."""
        d = self._fresh(part)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return write_text(d / "error.txt", text)

    def write_config(self, doc: dict) -> None:
        write_json(self.dir / "config.json", doc)

    def seal(self, status: str) -> None:
        seal_run(self.dir, {"run_key": self.key, "status": status})


def part_status(store: RunStore, part: str) -> Tuple[str, dict]:
    """("done", infos of every shard) or ("failed", the first failure) over all ranks' shards."""
    infos = []
    for r in range(store.world):
        d = store.shard_dir(part, r)
        if (d / "error.txt").exists():
            text = (d / "error.txt").read_text().strip().splitlines()
            return "failed", {
                "reason": text[-1] if text else "failed",
                "traceback_file": str(d / "error.txt"),
            }
        if artifacts.verify(d) is not None:
            return "failed", {"reason": f"rank {r} left no finished results in {d}"}
        infos.append(artifacts.meta(d)["info"])
    return "done", {"shards": infos}


def _read_part(store: RunStore, part: str):
    shards = [store.shard_dir(part, r) for r in range(store.world)]
    scores = pd.concat([pd.read_csv(d / "scores.csv", dtype={"image_id": str}) for d in shards])
    curves = pd.concat([pd.read_csv(d / "curves.csv") for d in shards])
    states = [load_torch(d / "states.pt") for d in shards]
    maps = [read_maps(d / "maps.npz") for d in shards]
    return (
        scores.sort_values("batch", kind="stable"),
        curves.sort_values("batch", kind="stable"),
        states,
        maps,
    )


def merge(
    store: RunStore,
    entries: Sequence[Tuple[str, str, Optional[int]]],
    dataset: str,
    model: str,
    seed: int,
    all_maps: bool,
) -> None:
    """scores.csv, curves.csv, states.pt and maps/ from the finished parts ``entries``
    (method, part, training seed or None), in that order; ``all_maps``: keep every map."""
    frames, curve_frames, states = [], [], {}
    (store.dir / "maps").mkdir(exist_ok=True)
    artifacts.clear(store.dir / "maps")
    for method, part, s in entries:
        scores, curves, shard_states, shard_maps = _read_part(store, part)
        scores = scores.drop(columns="batch")
        scores.insert(0, "train_seed", pd.array([s] * len(scores), dtype="Int64"))
        curves = _mean_curves(curves)
        for frame in (scores, curves):
            frame.insert(0, "method", method)
            frame.insert(0, "model", model)
            frame.insert(0, "dataset", dataset)
        frames.append(scores)
        curve_frames.append(curves)
        part_states = _ordered_states(shard_states)
        if s is not None:  # a trained method's states are keyed by training seed, even for one seed
            for name, st in part_states.items():
                states.setdefault(method, {}).setdefault(name, {})[s] = st
        else:
            states[method] = part_states
        _write_maps(store, part, shard_maps, seed, all_maps)
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    write_csv(store.dir / "scores.csv", scores[SCORE_COLUMNS])
    curves = (
        pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame(columns=CURVE_COLUMNS)
    )
    write_csv(store.dir / "curves.csv", _pool_seeds(curves))
    save_torch(store.dir / "states.pt", states)


def _write_maps(store: RunStore, part: str, shard_maps: List[MapFile], seed: int, all_maps: bool) -> None:
    rows = [(b, k, i) for k, m in enumerate(shard_maps) for i, b in enumerate(m.meta.get("batches", []))]
    rows.sort(key=lambda r: r[0])  # batch order, a stable sort keeps the order within a batch
    ids = [shard_maps[k].ids[i] for _, k, i in rows]
    maps = torch.stack([shard_maps[k].maps[i] for _, k, i in rows]) if rows else torch.empty(0, 1, 1)
    targets = torch.stack([shard_maps[k].targets[i] for _, k, i in rows]) if rows else None
    level = shard_maps[0].level
    meta = {k: v for k, v in shard_maps[0].meta.items() if k not in ("batches", "extra_batches", "format")}
    if all_maps:
        full = MapFile(maps, ids, level, targets, meta)
        extra = [
            (b, m.extra_ids[i], m.extra_targets[i], m.extra_maps[i])
            for m in shard_maps
            for i, b in enumerate(m.meta.get("extra_batches", []))
        ]
        extra.sort(key=lambda e: e[0])
        if extra:
            full.extra_ids = [e[1] for e in extra]
            full.extra_targets = torch.stack([e[2] for e in extra])
            full.extra_maps = torch.stack([e[3] for e in extra])
        write_maps(maps_path(store.dir, part), full)
    keep = preview_ids(ids, seed)
    rows = [i for i, image_id in enumerate(ids) if image_id in keep]
    sample = MapFile(
        maps[rows], [ids[i] for i in rows], level, None if targets is None else targets[rows], meta
    )
    write_maps(preview_path(store.dir, part), sample)


def _mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per-batch sums (in batch order) → mean curves (metric, x, value, n)."""
    total: Dict[tuple, float] = {}
    count: Dict[tuple, int] = {}
    for metric, x, s, n in curves[["metric", "x", "sum", "n"]].itertuples(index=False):
        total[(metric, x)] = total.get((metric, x), 0.0) + float(s)
        count[(metric, x)] = count.get((metric, x), 0) + int(n)
    rows = [{"metric": k[0], "x": k[1], "value": total[k] / max(1, count[k]), "n": count[k]} for k in total]
    return pd.DataFrame(rows, columns=["metric", "x", "value", "n"])


def _pool_seeds(curves: pd.DataFrame) -> pd.DataFrame:
    """A method with several parts (training seeds) gets their n-weighted mean curve."""
    keys = ["dataset", "model", "method", "metric", "x"]
    if not curves.duplicated(keys).any():
        return curves[CURVE_COLUMNS]
    curves = curves.assign(total=curves["value"] * curves["n"])
    pooled = curves.groupby(keys, sort=False, as_index=False)[["total", "n"]].sum()
    pooled["value"] = pooled["total"] / pooled["n"].where(pooled["n"] > 0, 1)
    return pooled[CURVE_COLUMNS]


def _ordered_states(shards: List[dict]) -> Dict[str, torch.Tensor]:
    """The shards' per-image states in batch order."""
    batches = [b for s in shards for b in s["batches"]]
    order = sorted(range(len(batches)), key=lambda i: batches[i])
    names = {n for s in shards for n in s["states"]}
    return {n: torch.cat([s["states"][n] for s in shards if n in s["states"]])[order] for n in sorted(names)}


def seal_run(directory: str | Path, meta: Optional[dict] = None) -> dict:
    """Write a finished run's manifest over its files (all but the parts and the lock)."""
    directory = Path(directory)
    files = [
        str(p.relative_to(directory))
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and p.name not in (".lock", artifacts.MANIFEST)
        and p.relative_to(directory).parts[0] != "parts"
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
def open_store(
    out: str | Path, run_id: str, identity: dict, overwrite: bool = False, rank: int = 0, world: int = 1
) -> Iterator[RunStore]:
    """The store of ``<out>/<run_id>``. Rank 0 (or the only process) holds the directory's lock
    for the block and claims the directory; other ranks write only their own shards."""
    directory = Path(out) / run_id
    if rank != 0:
        directory.mkdir(parents=True, exist_ok=True)
        yield RunStore(directory, identity, rank, world)
        return
    with lock(directory, f"run {run_id}"):
        store = RunStore(directory, identity, rank, world)
        store.claim(overwrite)
        yield store
