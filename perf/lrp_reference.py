"""Maps of the authors' own ViT LRP on a tiny seeded ViT, written as a test fixture.

Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization" (CVPR 2021)
published an implementation of their method ("transformer_attribution") for ViTs
(repository hila-chefer/Transformer-Explainability, folder ``baselines/ViT``). It explains one
image at a time. This script

1. builds a tiny timm ``VisionTransformer`` (:data:`CONFIG`: 32×32 input, patch 8, depth 2,
   width 32, 2 heads, MLP ratio 4, qkv bias, CLS token only, token pooling, 10 classes) and
   redraws all its weights from a seeded generator (:func:`build_timm_vit`), so that biases,
   LayerNorm affines and embeddings are all non-trivial and the model does not depend on
   timm's initialisation;
2. builds *their* ``VisionTransformer`` from ``baselines/ViT/ViT_LRP.py`` of the checkout given
   by ``--reference-repo`` (imported from there at run time: none of their code is in this
   repository) with the same configuration, sets the ``eps`` of its LayerNorms to timm's
   (their final norm uses 1e-5 where timm uses 1e-6) and loads the timm weights into it (the
   parameter names coincide; :func:`their_state_dict` checks every name and shape) and checks
   that both models give the same logits;
3. runs their ``LRP(model).generate_LRP(image, index=target, method="transformer_attribution",
   start_layer=0)`` on :data:`N_IMAGES` seeded random images (:func:`reference_inputs`), each
   with a seeded random target class, and writes the maps (CLS row over the 16 patch tokens),
   the targets, both models' logits and how the file was made to
   ``tests/fixtures/lrp_reference_vit.json``.

Their explanation generator moves the one-hot vector to CUDA with ``.cuda()``; on a machine
without a GPU that call is made a no-op while their code runs. Their model needs ``einops``::

    git clone <their repository> /tmp/ref      # the fixture was made at commit c3e578f7
    pip install --target /tmp/refdeps einops
    PYTHONPATH=/tmp/refdeps OMP_NUM_THREADS=1 python perf/lrp_reference.py --reference-repo /tmp/ref

``--measure`` needs no checkout: it runs our "lrp" on the same model and prints the relevance
totals (after the final LayerNorm and at every block's input, per image, for the fixture's
images and 32 more seeded ones), the largest batch-vs-single-image difference and the per-image
Pearson correlation with the recorded maps::

    OMP_NUM_THREADS=1 python perf/lrp_reference.py --measure

``tests/test_lrp_vit.py`` imports :func:`build_timm_vit` and :func:`reference_inputs` from
this file, rebuilds the model (checking the recorded logits) and compares our "lrp" maps with
the recorded ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import torch

CONFIG = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, num_classes=10)
MODEL_SEED = 0
INPUT_SEED = 1
N_IMAGES = 6
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lrp_reference_vit.json"
WEIGHT_RECIPE = (
    "timm VisionTransformer(**CONFIG, qkv_bias=True, class_token=True, reg_tokens=0, global_pool='token'); "
    "then, in named_parameters() order, from torch.Generator().manual_seed(MODEL_SEED): LayerNorm "
    "weights 1 + 0.2 N(0,1), biases 0.1 N(0,1), cls_token N(0,1), pos_embed 0.5 N(0,1), other weights "
    "N(0,1) / sqrt(fan_in)"
)
INPUT_RECIPE = (
    "g = torch.Generator().manual_seed(INPUT_SEED); x = torch.randn(N_IMAGES, 3, 32, 32, generator=g); "
    "targets = torch.randint(0, num_classes, (N_IMAGES,), generator=g)"
)


def build_timm_vit(seed: int = MODEL_SEED) -> torch.nn.Module:
    """The tiny timm ViT of :data:`CONFIG` in eval mode, every weight redrawn from ``seed``."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**CONFIG, qkv_bias=True, class_token=True, reg_tokens=0, global_pool="token")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name == "cls_token":
                p.copy_(noise)
            elif name == "pos_embed":
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return model.eval()


def reference_inputs(seed: int = INPUT_SEED, n: int = N_IMAGES):
    """``n`` random images (n, 3, 32, 32) and target classes (n,), drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, CONFIG["img_size"], CONFIG["img_size"], generator=g)
    targets = torch.randint(0, CONFIG["num_classes"], (n,), generator=g)
    return x, targets


def their_state_dict(timm_state: dict, their_state: dict) -> dict:
    """timm's parameters under the names of the authors' model (the names coincide: both follow
    timm's ViT of 2020); every name and shape is checked in both directions."""
    mapped = {}
    for key, theirs in their_state.items():
        if key not in timm_state:
            raise KeyError(f"their parameter {key} has no timm counterpart")
        if timm_state[key].shape != theirs.shape:
            raise ValueError(f"{key}: timm {tuple(timm_state[key].shape)} vs theirs {tuple(theirs.shape)}")
        mapped[key] = timm_state[key].clone()
    unused = sorted(set(timm_state) - set(mapped))
    if unused:
        raise KeyError(f"timm parameters not used by their model: {unused}")
    return mapped


@contextlib.contextmanager
def _cuda_calls_are_noops():
    """Their generator calls ``tensor.cuda()``; on a CPU-only machine make that the identity."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def measure(fixture: Path) -> None:
    """Our "lrp" on the fixture's model: conservation, batch vs single images, agreement."""
    from xaibench.adapter import ModelAdapter
    from xaibench.methods import create_method
    from xaibench.methods.lrp import vit_relevance

    record = json.loads(fixture.read_text())
    adapter = ModelAdapter(
        build_timm_vit(record["model_seed"]), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(32, 32)
    )
    x, targets = reference_inputs(record["input_seed"], record["n_images"])
    g = torch.Generator().manual_seed(INPUT_SEED + 1)
    more = torch.randn(32, 3, 32, 32, generator=g)
    xs, ts = (
        torch.cat([x, more]),
        torch.cat([targets, torch.randint(0, CONFIG["num_classes"], (32,), generator=g)]),
    )
    rel = vit_relevance(adapter, xs, ts)

    def gap(t):  # largest |per-image total - 1|
        return (t.flatten(1).double().sum(1) - 1).abs().max().item()

    print(f"batch of {len(xs)} images; the target's relevance is 1 (one-hot)")
    print(f"  |total - 1| after the head:             {gap(rel.pooled):.3g}")
    print(f"  |total - 1| after the final LayerNorm:  {gap(rel.tokens):.3g}")
    for block, (r_in, r_out) in enumerate(zip(rel.block_inputs, rel.block_outputs())):
        step = (r_in.flatten(1).double().sum(1) - r_out.flatten(1).double().sum(1)).abs().max().item()
        print(f"  block {block}: |total - 1| at its input {gap(r_in):.3g}, |in - out| {step:.3g}")
    lrp = create_method("lrp")
    ids = [str(i) for i in range(len(xs))]
    batched = lrp.attribute(adapter, xs, ts, ids=ids).maps
    single = torch.cat(
        [
            lrp.attribute(adapter, xs[i : i + 1], ts[i : i + 1], ids=ids[i : i + 1]).maps
            for i in range(len(xs))
        ]
    )
    diff = (batched - single).abs().max().item()
    print(f"batch vs single: max |difference| {diff:.3g} (map scale {batched.abs().max().item():.3g})")
    ours, theirs = batched[: len(x)].flatten(1), torch.tensor(record["maps"])
    r = torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(ours, theirs)])
    rel_gap = ((ours - theirs).abs().amax(1) / theirs.abs().amax(1)).max().item()
    print(
        f"vs the authors' maps ({len(x)} images): Pearson min {r.min().item():.8f} "
        f"mean {r.mean().item():.8f}; max |difference| / map max {rel_gap:.3g}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-repo", type=Path, help="checkout of their repository")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--measure", action="store_true", help="measure our lrp against the fixture --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.measure:
        return measure(args.out)
    if args.reference_repo is None:
        parser.error("--reference-repo is required (unless --measure)")

    repo = args.reference_repo.resolve()
    sys.path.insert(0, str(repo))
    from baselines.ViT.ViT_explanation_generator import LRP
    from baselines.ViT.ViT_LRP import VisionTransformer as TheirViT

    ours = build_timm_vit()
    cfg = {k: v for k, v in CONFIG.items() if k != "img_size"}
    theirs = TheirViT(img_size=CONFIG["img_size"], qkv_bias=True, **cfg).eval()
    timm_norms = {n: mod for n, mod in ours.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    for name, mod in theirs.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.eps = timm_norms[name].eps
    theirs.load_state_dict(their_state_dict(ours.state_dict(), theirs.state_dict()), strict=True)

    x, targets = reference_inputs()
    logits_timm, logits_theirs = ours(x).detach(), theirs(x).detach()  # their forward needs autograd on
    logit_gap = (logits_timm - logits_theirs).abs().max().item()
    if logit_gap > 1e-4:
        raise SystemExit(f"their model does not reproduce timm's logits (max difference {logit_gap:.3g})")

    explainer = LRP(theirs)
    maps = []
    with _cuda_calls_are_noops():
        for i in range(len(x)):
            cam = explainer.generate_LRP(
                x[i : i + 1], index=int(targets[i]), method="transformer_attribution", start_layer=0
            )
            maps.append(cam.detach().reshape(-1))
    maps = torch.stack(maps)

    import timm

    record = {
        "description": (
            "Maps of Chefer, Gur & Wolf's own implementation of 'Transformer Interpretability Beyond "
            "Attention Visualization' (CVPR 2021), LRP(model).generate_LRP(image, index=target, "
            "method='transformer_attribution', start_layer=0), one image at a time, on a tiny timm ViT "
            "whose weights were copied into their baselines/ViT/ViT_LRP.py VisionTransformer"
        ),
        "produced_by": "perf/lrp_reference.py",
        "command": (
            "PYTHONPATH=<einops> python perf/lrp_reference.py --reference-repo <checkout of "
            "hila-chefer/Transformer-Explainability>"
        ),
        "reference_repository": "hila-chefer/Transformer-Explainability",
        "reference_commit": _commit(repo),
        "config": CONFIG,
        "model_seed": MODEL_SEED,
        "weights": WEIGHT_RECIPE,
        "input_seed": INPUT_SEED,
        "n_images": N_IMAGES,
        "inputs": INPUT_RECIPE,
        "their_layernorm_eps": "set to timm's (1e-6) on all their LayerNorms",
        "their_cuda_calls": (
            "ran on a GPU"
            if torch.cuda.is_available()
            else "no GPU: torch.Tensor.cuda was the identity while their code ran (CPU)"
        ),
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "max_logit_difference_timm_vs_theirs": logit_gap,
        "targets": targets.tolist(),
        "logits": logits_timm.tolist(),
        "maps": maps.tolist(),
        "map_layout": "per image: CLS row of the rollout over the patch tokens, row-major 4x4 patch grid",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} ({len(x)} maps; max logit difference timm vs theirs {logit_gap:.3g})")


if __name__ == "__main__":
    main()
