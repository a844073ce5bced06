"""Draw ``docs/streetview_vs_overhead.png``: street views beside the orthophoto around them.

Each row shows one photo of a synthetic city and the orthophoto crop centred on the camera,
with the camera drawn as a dot and its field of view as a wedge, to check by eye that both
views show the same buildings, colours and streets::

    .venv/bin/python docs/make_figures.py                    # generates a small city first
    .venv/bin/python docs/make_figures.py --city out/demo-city --ids 000010 000042
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from pyproj import Transformer
from rasterio.windows import Window

from data_prep.synth import SynthCityConfig, synth_city
from zoomloc.geo.citydir import CityDir

HERE = Path(__file__).resolve().parent
PHOTO_SCALE = 2
CROP_M = 120.0
DEFAULT_IDS = ["000001", "000003", "000004", "000009", "000013"]


def overhead_crop(ortho: Path, lon: float, lat: float, heading_deg: float, fov_deg: float, side_px: int) -> Image.Image:
    """The orthophoto square of ``CROP_M`` around (lon, lat), with the camera and its view drawn."""
    with rasterio.open(ortho) as ds:
        x, y = Transformer.from_crs(4326, ds.crs, always_xy=True).transform(lon, lat)
        row, col = ds.index(x, y, op=float)
        half = CROP_M / ds.res[0] / 2
        window = Window(col - half, row - half, 2 * half, 2 * half)
        pixels = ds.read(window=window, boundless=True, fill_value=0).transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(pixels)).resize((side_px, side_px), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    c = side_px / 2
    reach = side_px * 0.42
    for angle in (heading_deg - fov_deg / 2, heading_deg + fov_deg / 2):
        a = math.radians(angle)
        draw.line([(c, c), (c + reach * math.sin(a), c - reach * math.cos(a))], fill=(255, 220, 0), width=2)
    a = math.radians(heading_deg)
    draw.line([(c, c), (c + reach * 0.6 * math.sin(a), c - reach * 0.6 * math.cos(a))], fill=(255, 60, 40), width=2)
    draw.ellipse([c - 5, c - 5, c + 5, c + 5], fill=(255, 60, 40), outline=(255, 255, 255))
    return img


def make_figure(city_dir: Path, ids: list[str], out: Path) -> None:
    city = CityDir(city_dir)
    meta = city.read_metadata().set_index("image_id")
    ortho = city.satellite_files()[0]
    rows = []
    for image_id in ids:
        rec = meta.loc[image_id]
        photo = Image.open(city.image_path(image_id)).convert("RGB")
        photo = photo.resize((photo.width * PHOTO_SCALE, photo.height * PHOTO_SCALE), Image.NEAREST)
        crop = overhead_crop(ortho, rec["lon"], rec["lat"], rec["heading_deg"], rec["fov_deg"], photo.height)
        row = Image.new("RGB", (photo.width + crop.width + 8, photo.height), "white")
        row.paste(photo, (0, 0))
        row.paste(crop, (photo.width + 8, 0))
        ImageDraw.Draw(row).text((6, 4), f"{image_id}  heading {rec['heading_deg']:.0f}°  fov {rec['fov_deg']:.0f}°", fill=(255, 255, 255))
        rows.append(row)
    title = 24
    sheet = Image.new("RGB", (rows[0].width, title + sum(r.height + 8 for r in rows)), "white")
    ImageDraw.Draw(sheet).text(
        (6, 6), f"street view (left) and orthophoto, {CROP_M:.0f} m around the camera (right; wedge = field of view)", fill=(0, 0, 0)
    )
    y = title
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--city", type=Path, default=None, help="city directory (default: generate a 600 m city)")
    parser.add_argument("--ids", nargs="+", default=DEFAULT_IDS, help="image ids to show")
    parser.add_argument("--out", type=Path, default=HERE / "streetview_vs_overhead.png")
    args = parser.parse_args(argv)
    if args.city is not None:
        make_figure(args.city, args.ids, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="synth-figure-") as tmp:
            city = Path(tmp) / "city"
            synth_city(city, SynthCityConfig(size_m=600, images=20), progress=False)
            make_figure(city, args.ids, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
