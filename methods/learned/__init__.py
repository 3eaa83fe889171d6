"""Learned explainers: ViT-Shapley, Salvage (with classifying by explaining) and COMET.

All train under one stopping rule (a held-out validation loss that stops improving, or a cap on
the steps, the same for every learned method of a preset) and are cached as verified artifacts in
``<cache>/explainers/``, keyed by the content of the training data, the classifier, the recipe and
the seed; training resumes from its last validated round after an interruption. See :mod:`.common`.
"""

from . import comet, salvage, vit_shapley  # noqa: F401  (register the methods)
