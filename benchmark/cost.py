"""What explaining and scoring cost, counted in passes through the model.

A :class:`Cost` counts forward and backward passes of one input through the classifier at its
full size; a backward pass costs about two forwards, so :attr:`Cost.equivalent` is the number of
forward-equivalents. Token dropping on a ViT runs a shorter sequence: a forward that keeps k of
P patches (and the prefix tokens) costs about (prefix + k) / (prefix + P) of a full one, the
share of the token-wise layers that dominate a small ViT. Methods and metrics state their own
cost (``cost``); the run adds them up before it starts (``--dry-run`` prints only that).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    forwards: float = 0.0
    backwards: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forwards + other.forwards, self.backwards + other.backwards)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.forwards * k, self.backwards * k)

    __rmul__ = __mul__

    @property
    def equivalent(self) -> float:
        """Forward-equivalents (a backward pass counted as two forwards)."""
        return self.forwards + 2.0 * self.backwards


FORWARD_BACKWARD = Cost(1.0, 1.0)
FREE = Cost()


@dataclass(frozen=True)
class Shape:
    """What costs depend on besides the settings: the patch grid and the kind of model."""

    num_patches: int
    prefix_tokens: int = 0
    is_vit: bool = False

    def kept(self, k: float) -> float:
        """Cost of a token-dropped forward that keeps ``k`` patches, as a share of a full one."""
        if not self.is_vit:
            return 1.0
        return (self.prefix_tokens + k) / (self.prefix_tokens + self.num_patches)

    @classmethod
    def of(cls, adapter) -> "Shape":
        return cls(adapter.num_patches, adapter.num_prefix_tokens, adapter.is_vit)
