"""The batch the harness hands to methods and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass
class Batch:
    """Images of one batch with what methods and metrics need to know about them."""

    x: torch.Tensor  # (B, 3, H, W) normalised
    labels: torch.Tensor  # (B,) true labels
    targets: torch.Tensor  # (B,) explained class (prediction or label)
    ids: List[str]
    probs: torch.Tensor  # (B, C) clean probabilities
    masks: Optional[torch.Tensor] = None  # (B, H, W) bool ground-truth object masks

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def second_labels(self) -> torch.Tensor:
        """The second most probable class of the clean prediction."""
        return self.probs.topk(2, dim=1).indices[:, 1]

    def subset(self, rows: torch.Tensor) -> "Batch":
        """The images ``rows`` (a 1-D index tensor) of this batch."""
        idx = rows.tolist()
        return Batch(
            x=self.x[rows],
            labels=self.labels[rows],
            targets=self.targets[rows],
            ids=[self.ids[i] for i in idx],
            probs=self.probs[rows],
            masks=None if self.masks is None else self.masks[rows],
        )
