"""``xaibench evaluate``: score saliency maps computed anywhere, as first-class method rows.

Each ``--maps`` file (format: :mod:`xaibench.maps`) becomes a method of the run, named after the
file (or ``--name``). Everything is checked before anything is scored, and any problem is one
line: ids missing from or foreign to the run's images, a shape or level that does not fit the
model, a file recorded for another dataset or model, targets that are not the run's. Maps saved
by a run (``--save-maps``) and evaluated with the same settings give the run's own scores, byte
for byte: the maps of other classes that completeness/soundness needed are in the file too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from xaibench.methods import AttributionMethod

from .attribution import Attribution
from .context import RunContext, batches, load_context
from .errors import UserError
from .harness import execute, instances, needs_train_images, prepare
from .identity import run_identity
from .io import file_hash
from .maps import MapFile, read_maps
from .spec import RunConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PrecomputedMaps(AttributionMethod):
    """Maps read from a file: ``attribute`` looks them up by image id (and class)."""

    def __init__(self, maps: MapFile, name: str, sha256: str) -> None:
        super().__init__(preset="paper", seed=0)
        self.name, self.label = name, name
        self.maps = maps
        self.sha256 = sha256
        self.rows = {image_id: i for i, image_id in enumerate(maps.ids)}
        classes = [] if maps.extra_targets is None else maps.extra_targets.tolist()
        self.extra = {(image_id, c): i for i, (image_id, c) in enumerate(zip(maps.extra_ids, classes))}
        # a file with maps of other classes explains each class; one without, one map per image
        self.class_dependent = bool(maps.extra_ids)

    def settings(self) -> dict:
        return {"maps_sha256": self.sha256, "level": self.maps.level, "source": self.maps.meta.get("method")}

    def attribute(self, adapter, x, target, *, ids, masks=None):
        out = []
        for image_id, c in zip(ids, target.tolist()):
            row = self.rows[image_id]
            own = self.maps.targets is None or int(self.maps.targets[row]) == c
            if own or not self.class_dependent:
                out.append(self.maps.maps[row])
            elif (image_id, c) in self.extra:
                out.append(self.maps.extra_maps[self.extra[(image_id, c)]])
            else:
                raise UserError(f"{self.name}: the file has no map of class {c} for image {image_id}")
        return Attribution(torch.stack(out).to(x.device), self.maps.level)


def _name(path: Path, given: Optional[str]) -> str:
    name = given or path.name.removesuffix(".npz").removesuffix(".preview")
    if not _NAME.fullmatch(name):
        raise UserError(
            f"'{name}' is not a usable method name: pass --name with letters, digits, '.', '_', '-'"
        )
    return name


def check(
    maps: MapFile, where: str, ctx: RunContext, identity: Dict, targets: Dict[str, int], rule: str
) -> None:
    """Everything that must hold before a file is scored (one-line errors)."""
    expected = [ctx.data.image_id(i) for i in ctx.indices]
    missing = [i for i in expected if i not in set(maps.ids)]
    extra = [i for i in maps.ids if i not in set(expected)]
    if missing:
        raise UserError(
            f"{where} lacks {len(missing)} of the run's {len(expected)} images "
            f"(e.g. {', '.join(missing[:3])}); "
            f"choose the images with --dataset/--split/--n-images as when the maps were made"
        )
    if extra:
        raise UserError(
            f"{where} has {len(extra)} image ids that are not among the run's images (e.g. {extra[0]})"
        )
    want = {"patch": tuple(ctx.adapter.grid), "pixel": tuple(ctx.adapter.input_size)}[maps.level]
    if tuple(maps.maps.shape[1:]) != want:
        raise UserError(
            f"{where}: {maps.level} maps of {tuple(maps.maps.shape[1:])} do not fit the model: "
            f"{maps.level} maps of {ctx.adapter.name} are {want} "
            f"(patch grid {tuple(ctx.adapter.grid)}, input {tuple(ctx.adapter.input_size)})"
        )
    recorded = maps.meta
    for what, key in (("dataset", "fingerprint"), ("model", "weights_sha256")):
        theirs, ours = (recorded.get(what) or {}).get(key), identity[what][key]
        if theirs is not None and theirs != ours:
            raise UserError(
                f"{where} was made for another {what} ({what} {key} {theirs[:12]}…, this run's {ours[:12]}…)"
            )
    if maps.targets is not None:
        wrong = [i for i, t in zip(maps.ids, maps.targets.tolist()) if targets[i] != t]
        if wrong:
            raise UserError(
                f"{where}: {len(wrong)} maps explain another class than the run's target (e.g. {wrong[0]}); "
                f"the run explains --target {rule}"
            )


def evaluate(config: RunConfig, files: Sequence[str], names: Sequence[str] = ()):
    """Score the map ``files`` (validated first) with every metric of ``config``; returns the
    run's :class:`~xaibench.harness.RunOutcome`."""
    if names and len(names) != len(files):
        raise UserError(f"--name was given {len(names)} times for {len(files)} --maps files")
    paths = [Path(f).expanduser() for f in files]
    loaded = [read_maps(p) for p in paths]
    methods: List[PrecomputedMaps] = [
        PrecomputedMaps(m, _name(p, names[k] if names else None), file_hash(p, 64))
        for k, (p, m) in enumerate(zip(paths, loaded))
    ]
    if len({m.name for m in methods}) != len(methods):
        raise UserError("two --maps files have the same name: give each a --name")
    spec = prepare(config)
    _, metrics = instances(spec)
    ctx = load_context(spec, needs_train_images([], metrics))
    identity = run_identity(spec, ctx, with_train=False)
    targets = {
        i: t for _, b in batches(ctx, spec.batch_size, spec.target) for i, t in zip(b.ids, b.targets.tolist())
    }
    for p, m in zip(paths, loaded):
        check(m, f"maps file {p}", ctx, identity, targets, spec.target)
    return execute(config, context=ctx, methods=methods)
