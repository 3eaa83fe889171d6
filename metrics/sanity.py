"""Model-parameter randomisation check (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity
Checks for Saliency Maps", NeurIPS 2018).

A map that explains the classifier must change when the classifier's learned weights are
destroyed. For each image of a seeded sample, the method explains the same target on two
randomised copies of the scored model, cascading from the top as in the paper: ``top`` — the
last block (ViT: last transformer block, final norm and head; CNN: the last stage and the
classifier) re-initialised; ``all`` — every layer re-initialised. The score is the Spearman
rank correlation between the map on the trained model and the map on the randomised one
(near 0: the map depends on the weights; the leaderboard flags methods whose maps barely change
and does not rank this column). A constant map has no ranking: a pair where only
one map is constant scores 0, two constant maps score 1.

Methods that do not query the classifier when they explain (learned explainers, which answer
from their own networks; COMET, which explains its own model; the reference rows) are not
applicable: retraining them on every randomised model would cost a full training each, so the
check gives them no value (their ``queries_model`` is False), and the leaderboard says so.
Re-initialisation uses each layer's own ``reset_parameters`` (and a truncated normal of
std 0.02 for a ViT's position embeddings and prefix tokens), seeded by the run's seed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch
from scipy.stats import spearmanr

from xaibench.adapter import same_setting
from xaibench.cost import FREE
from xaibench.params import check
from xaibench.seeding import derive_seed

from .base import Metric, MetricResult, register_metric

STAGES = ("top", "all")
#: a mean correlation from which the leaderboard flags a method's maps as barely changing
BARELY_CHANGES = 0.8


def top_modules(adapter) -> List[torch.nn.Module]:
    """The layers re-initialised first: the model's last block and everything after it."""
    m = adapter.model
    if adapter.is_vit:
        names = ("norm", "fc_norm", "head")
        return [m.blocks[-1]] + [
            getattr(m, n) for n in names if isinstance(getattr(m, n, None), torch.nn.Module)
        ]
    return adapter.gradcam_target_layers() + [m.get_classifier()]


def randomised(adapter, stage: str, seed: int):
    """A copy of ``adapter`` whose ``stage`` ("top" or "all") layers are re-initialised."""
    model = copy.deepcopy(adapter.model)
    twin = same_setting(adapter, model, f"{adapter.name} ({stage} randomised)")
    originals = {id(mod): i for i, mod in enumerate(adapter.model.modules())}
    copies = list(model.modules())
    chosen = top_modules(adapter) if stage == "top" else list(adapter.model.modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "randomisation", stage))
        for mod in chosen:
            for sub in copies[originals[id(mod)]].modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        if stage == "all":
            for name in ("pos_embed", "cls_token", "reg_token"):
                p = getattr(model, name, None)
                if isinstance(p, torch.nn.Parameter):
                    torch.nn.init.trunc_normal_(p.data, std=0.02)
    return twin


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double().numpy(), b.flatten().double().numpy()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    return float(spearmanr(a, b).statistic)


@register_metric("randomisation")
class ModelRandomisation(Metric):
    """Rank correlation of maps before and after re-initialising the classifier (Adebayo et al. 2018)."""

    provides = ("rand_top", "rand_all")
    directions = {}  # a sanity check, not a ranking: near 0 passes, near 1 is flagged
    sampled = True
    labels = {"rand_top": "Rand. top", "rand_all": "Rand. all"}
    category = "sanity"
    #: share of the images checked (each image in or out by a hash of the seed and its id)

    @dataclass(frozen=True)
    class Params:
        fraction: float = 1.0

        def __post_init__(self):
            check(0 < self.fraction <= 1, "fraction must lie in (0, 1]")

    presets = {"quick": {"fraction": 0.25}, "fast": {"fraction": 0.1}}

    def cost(self, shape, ctx, method):
        return (2 * self.params.fraction) * method.cost(shape) if method.queries_model else FREE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._models: Dict[tuple, object] = {}

    def sample(self, ids, seed: int) -> torch.Tensor:
        cut = self.params.fraction * 2**63
        return torch.tensor([derive_seed(seed, "randomisation-sample", i) < cut for i in ids])

    def compute(self, ctx, batch, attribution, explain=None):
        rows = self.sample(batch.ids, ctx.seed).nonzero()[:, 0]
        scores = {name: torch.full((len(batch),), float("nan")) for name in self.provides}
        if len(rows) and explain is not None:
            for stage in STAGES:
                key = (id(ctx.adapter), stage)
                if key not in self._models:
                    self._models[key] = randomised(ctx.adapter, stage, ctx.seed)
                other = explain(batch.targets, model=self._models[key], rows=rows)
                if other is None:  # the method does not query the classifier: not applicable
                    break
                ours = attribution.maps[rows].cpu()
                values = [rank_correlation(a, b) for a, b in zip(ours, other.maps.cpu())]
                scores[f"rand_{stage}"][rows] = torch.tensor(values)
        return MetricResult(scores=scores)
