"""The HTML report of finished runs and a full-page screenshot of it in headless Chromium.

    python perf/report_screenshot.py RUN_DIR [RUN_DIR ...] --out results/reference/report.png
        [--html report.html] [--width 1366] [--n-images 6] [--cache-dir DIR] [--data-root DIR]

Writes the report (``xaibench report``; to ``--html``, else a temporary file), opens it in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through selenium: never a
downloaded browser) at ``--width`` CSS pixels and saves the whole page as PNG to ``--out``.
Prints the paths and the size of the HTML in bytes. ``perf/`` is put on ``sys.path`` first, so
that runs made with the ``skimage_photos`` plugin (``perf/photo_grid.py``) find it again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--out", required=True, help="the screenshot (PNG)")
    p.add_argument("--html", default=None, help="keep the report here (default: a temporary file)")
    p.add_argument("--width", type=int, default=1366, help="window width in CSS pixels (a laptop screen)")
    p.add_argument("--n-images", type=int, default=6, help="images of the qualitative grid")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))

    from xaibench.errors import UserError
    from xaibench.report import screenshot, write_report

    try:
        with tempfile.TemporaryDirectory(prefix="xaibench-report-") as tmp:
            html = Path(args.html) if args.html else Path(tmp) / "report.html"
            write_report(
                args.runs, html, n_grid=args.n_images, cache_dir=args.cache_dir, data_root=args.data_root
            )
            size = html.stat().st_size
            png = screenshot(html, args.out, width=args.width)
    except UserError as exc:
        print(f"report_screenshot: error: {exc}", file=sys.stderr)
        return 2
    print(f"{html if args.html else '(temporary) report.html'}: {size} bytes of HTML")
    print(f"{png}: {png.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
