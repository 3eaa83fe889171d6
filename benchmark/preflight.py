"""Preflight: everything a run needs, checked before any long work, every problem reported at once.

Checked: the output and cache directories can be written; the dataset is there (``--data-root``,
or an extraction in the cache) or can be downloaded (its host answers, and the cache has room
for the archive and its extraction); the model's weights are there (``--weights``, a fine-tuned
classifier, timm's cache) or can be downloaded (the hub answers). Reachability is one short
connection attempt per host, so an offline machine learns in seconds what is missing — not after
the hub's own retries — and what to pass instead (``--data-root``, ``--weights``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Callable, List, Optional
from urllib.parse import urlparse

from .errors import UserError
from .io import cache_path, check_writable
from .pretrained import finetune_pointer
from .registry import DATASETS, MODELS
from .spec import RunSpec

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


def reachable(host: str, timeout: float = 3.0) -> bool:
    """One TCP connection attempt to ``host``:443 (no retries; offline answers at once)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and host == HUB_HOST:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _directories(spec: RunSpec) -> List[str]:
    problems = []
    for path, what in ((spec.out, "--out"), (cache_path(spec.cache_dir), "--cache-dir")):
        try:
            check_writable(path, what)
        except UserError as exc:
            problems.append(str(exc))
    return problems


def _dataset(spec: RunSpec, online: Callable[[str], bool]) -> List[str]:
    check = getattr(DATASETS.get(spec.dataset), "needs", None)
    if check is None:  # generated or registered by a plugin: nothing to fetch
        return []
    need = check(data_root=spec.data_root, cache_dir=spec.cache_dir)
    if need is None:
        return []
    if isinstance(need, str):
        return [need]
    url, size = need
    host = urlparse(url).hostname or ""
    problems = []
    if url.startswith(("http://", "https://")) and not online(host):
        problems.append(
            f"dataset '{spec.dataset}' is not in the cache and {host} cannot be reached: pass --data-root "
            f"with a copy you have"
        )
    free = _free_bytes(cache_path(spec.cache_dir))
    if free < 3 * size:  # the archive, its extraction, and room to spare
        problems.append(
            f"the cache ({cache_path(spec.cache_dir)}) has {free / 2**30:.1f} GiB free; "
            f"dataset '{spec.dataset}' needs about {3 * size / 2**30:.1f} GiB to download and unpack: "
            f"free space or pass --cache-dir"
        )
    return problems


def timm_weights_cached(name: str) -> Optional[bool]:
    """Whether timm's pretrained weights of ``name`` are in the local hub cache (None: unknown)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  (a model without a pretrained config: timm will say)
        return None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        return None
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.hf_hub_id.split("@")[0]
    files = (
        [cfg.hf_hub_filename]
        if getattr(cfg, "hf_hub_filename", None)
        else ["model.safetensors", "pytorch_model.bin"]
    )
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def _weights(spec: RunSpec, online: Callable[[str], bool]) -> List[str]:
    if spec.weights:
        path = Path(spec.weights).expanduser()
        return [] if path.is_file() else [f"--weights {path}: no such file"]
    if spec.model in MODELS:  # a recipe: trained here
        return []
    if finetune_pointer(spec.cache_dir, spec.model, spec.dataset).exists():
        return []
    if timm_weights_cached(spec.model) is False and not online(HUB_HOST):
        return [
            f"timm's pretrained weights for '{spec.model}' are not in the cache and {HUB_HOST} cannot be "
            f"reached: pass --weights PATH with a local checkpoint (state dict or .safetensors)"
        ]
    return []


def preflight(spec: RunSpec) -> None:
    """Raise one :class:`UserError` naming every missing piece, or return."""
    memo: dict = {}

    def cached_online(host: str) -> bool:
        if host not in memo:
            memo[host] = reachable(host)
        return memo[host]

    problems = _directories(spec) + _dataset(spec, cached_online) + _weights(spec, cached_online)
    if problems:
        raise UserError("cannot start: " + " | ".join(problems))
