"""Draw ``docs/demo_map.png``: the demo's ``map.html`` as headless Chromium shows it.

Run after ``make demo`` (the map of its held-out photos), with Debian's chromium installed
(``.ci/install_chromium.sh``)::

    .venv/bin/python docs/make_demo_screenshot.py [--map out/demo/map.html]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXED_SIZE = "<style>.folium-map { width: 1200px !important; height: 800px !important; }</style>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, default=HERE.parent / "out" / "demo" / "map.html")
    parser.add_argument("--out", type=Path, default=HERE / "demo_map.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("needs Debian's chromium: bash .ci/install_chromium.sh")
    if not args.map.is_file():
        sys.exit(f"{args.map}: no such map; run `make demo` first")
    with tempfile.TemporaryDirectory() as tmp:
        # A fixed map size: the page's map fills its window, which a headless screenshot lays out
        # only after the map has fitted its bounds into no space at all.
        page = Path(tmp) / "map.html"
        page.write_text(args.map.read_text(encoding="utf-8").replace("<head>", "<head>" + FIXED_SIZE, 1), encoding="utf-8")
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={Path(tmp) / 'profile'}",
                "--window-size=1200,800",
                "--force-device-scale-factor=1",
                "--virtual-time-budget=5000",
                f"--screenshot={args.out.resolve()}",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
