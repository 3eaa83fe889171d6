"""Learned explainers: ViT-Shapley, Salvage (with classifying by explaining) and COMET.

Trained once per dataset × classifier × recipe × seed and cached (``<cache>/explainers/``);
training resumes from its last epoch after an interruption. See :mod:`.common`.
"""

from . import comet, salvage, vit_shapley  # noqa: F401  (register the methods)
