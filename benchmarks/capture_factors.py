"""What a street encoder must see through: the same places photographed again, one capture factor changed at a time.

A new capture of a learned street differs from the training photos in its light, its camera, its lens
and, above all, in where exactly it stood and which way it looked. This probe takes ``--poses`` frames
of a synthetic city's captures (``data_prep.capture``), renders each once more with one factor
changed (another capture's light, camera colour, lens; the camera moved along its heading or turned;
the ground's cast shadows from another sun),
and asks each encoder, for every re-rendered frame, which of the original frames is the same place:
Recall@1 among the ``--poses`` originals (chance: 1 / poses). Rendering the same scene again is what
only a synthetic city allows: the one change is the one measured. It takes a minute or two on 2 cores,
where a training run and its evaluation take a quarter of an hour, so an encoder change can be read
here first (but only the benchmark says whether it localizes).

    python benchmarks/capture_factors.py [--city-config configs/cities/bench.yaml] [--poses 300]
        [--encoder RUN/best.safetensors ...] [--out benchmarks/results/capture_factors.json]

``imagenet`` (always measured) is the shipped Lite0 with GeM pooling at ``--size`` (height width, the
benchmark's); each ``--encoder`` is a zoomloc checkpoint whose street encoder is measured as it trained
(its own input size and pooling).

Each capture casts the shadows of its own sun (``data_prep.capture.CAPTURE_SUNS``), so "light" moves
them too. The row "cast shadows of another sun" renders the frames with everything but the ground's and
roofs' shadows as they were: how much an encoder leans on shadows alone (a street encoder that
recognises places should not care).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_prep.capture import capture_surfaces, sample_sequences
from data_prep.overhead import Sun, surface_colours
from data_prep.scene import build_scene
from data_prep.street import StreetRenderer, Views, encode_jpeg
from data_prep.synth import SynthCityConfig
from zoomloc.core.atomic import write_text
from zoomloc.models.checkpoint import load_model
from zoomloc.models.encoders import EncoderConfig, ViewEncoders, build_encoder
from zoomloc.pipelines.benchmark import machine

REPO = Path(__file__).resolve().parents[1]
LIGHT = ("sun_east", "sun_north", "overcast", "wet", "light")
CAMERA = ("gain", "gamma", "tint", "blur", "noise", "vignette", "quality")
LENS = ("fov_deg", "cam_h", "pitch_deg", "roll_deg")
TRAFFIC = ("vehicles", "pedestrians")
OTHER_SUN = Sun(azimuth_deg=245.0, elevation_deg=25.0)  # late afternoon: the city's shadows fall elsewhere


def factor_views(base: Views, other: Views, gsd: float) -> dict[str, Views]:
    """The re-rendered frames: ``base`` with one factor taken from ``other`` (another capture's frames), or moved
    (rendered again as it is, the frames differ in what each render draws: cars, people, noise)."""

    def swap(*names: str) -> Views:
        return replace(base, **{n: getattr(other, n) for n in names})

    def moved(view: Views, metres: float) -> Views:
        heading = np.radians(base.heading_deg)
        return replace(view, row=base.row - metres * np.cos(heading) / gsd, col=base.col + metres * np.sin(heading) / gsd)

    every = swap(*LIGHT, *CAMERA, *LENS, *TRAFFIC)
    return {
        "rendered again (cars, people, noise)": base,
        "light (sun, overcast, wet roads)": swap(*LIGHT),
        "camera colour (gain, gamma, tint, blur, noise, vignette, JPEG)": swap(*CAMERA),
        "lens (field of view, height, pitch, roll)": swap(*LENS),
        "field of view alone": swap("fov_deg"),
        "traffic (how many cars and people)": swap(*TRAFFIC),
        "every condition": every,
        "moved 5 m": moved(base, 5.0),
        "moved 10 m": moved(base, 10.0),
        "moved 20 m": moved(base, 20.0),
        "turned 30°": replace(base, heading_deg=(base.heading_deg + 30.0) % 360.0),
        "every condition, moved 10 m": moved(every, 10.0),
    }


def render(renderer: StreetRenderer, views: Views, seed: int) -> torch.Tensor:
    """``[n, 3, H, W]`` uint8 photos of ``views``, JPEG-coded at each one's quality as the city's are."""
    photos = []
    for i in range(len(views)):
        img = renderer.render(views, i, np.random.default_rng([seed, i]))
        with Image.open(io.BytesIO(encode_jpeg(img, int(views.quality[i])))) as jpeg:
            photos.append(torch.from_numpy(np.array(jpeg.convert("RGB"))).permute(2, 0, 1))
    return torch.stack(photos)


def recall_at_1(queries: torch.Tensor, originals: torch.Tensor) -> float:
    """Share (%) of queries whose most similar original is their own (row i of both)."""
    best = (queries @ originals.T).argmax(1)
    return 100.0 * (best == torch.arange(len(queries))).float().mean().item()


@torch.inference_mode()
def embed(encoder: ViewEncoders, photos: torch.Tensor, batch: int = 50) -> torch.Tensor:
    transforms = encoder.transforms()
    # [B, n, 3, h, w]: n crops per photo (2 for a `halves` encoder), which encode_street averages
    out = [encoder.encode_street(torch.stack([transforms.street(p) for p in photos[s : s + batch]])) for s in range(0, len(photos), batch)]
    return torch.nn.functional.normalize(torch.cat(out).float(), dim=1)


def street_encoder(weights: str, size: tuple[int, int]) -> ViewEncoders:
    """The encoders of ``weights``: ImageNet's (``imagenet``, at ``size``) or a zoomloc checkpoint's, as it trained them."""
    if weights == "imagenet":
        return build_encoder(EncoderConfig(street_size=size, freeze="all", pool="gem")).eval()
    return load_model(weights)[0].encoders


def label(weights: str) -> str:
    """A table column's name: ``imagenet``, or a checkpoint's run folder and the one above (``sequence/zoom``)."""
    return weights if weights == "imagenet" else "/".join(Path(weights).resolve().parts[-3:-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--city-config", default="configs/cities/bench.yaml", help="a synthetic city's config (from the repository root)")
    ap.add_argument("--poses", type=int, default=300)
    ap.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    ap.add_argument("--encoder", action="append", default=[], help="a zoomloc checkpoint (repeatable)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)

    cfg = SynthCityConfig.from_yaml(REPO / args.city_config)
    t0 = time.perf_counter()
    scene = build_scene(cfg.scene, cfg.size_m, cfg.gsd, cfg.seed)
    rng = np.random.default_rng(args.seed)
    frames = sample_sequences(scene, cfg.camera, cfg.capture, 20 * args.poses, rng).views
    base = frames.subset(np.sort(rng.choice(len(frames), args.poses, replace=False)))
    other = frames.subset(rng.permutation(len(frames))[: args.poses])  # each frame another one's conditions
    surfaces = capture_surfaces(scene, frames, cfg.seed)
    renderer = StreetRenderer(scene, surfaces, cfg.camera)
    originals = render(renderer, base, 1)
    # The originals themselves first: every one must find itself, or the rows do not line up.
    factors = {"identical (the check: 100 %)": originals}
    factors |= {name: render(renderer, views, 2) for name, views in factor_views(base, other, cfg.gsd).items()}
    other_sun = surface_colours(scene, OTHER_SUN, cfg.seed)
    shadows = StreetRenderer(scene, dict.fromkeys(surfaces, other_sun), cfg.camera)
    factors["cast shadows of another sun"] = render(shadows, base, 2)
    render_s = time.perf_counter() - t0

    encoders = ["imagenet", *args.encoder]
    table: dict[str, dict[str, float]] = {}
    for weights in encoders:
        encoder = street_encoder(weights, tuple(args.size))
        mine = embed(encoder, originals)
        table[weights] = {name: recall_at_1(embed(encoder, photos), mine) for name, photos in factors.items()}

    print(
        f"Recall@1 (%) among {args.poses} original frames (chance {100 / args.poses:.2f} %); "
        f"{args.city_config}, rendered in {render_s:.0f} s"
    )
    print(f"{'':>64}" + "".join(f"{label(w)[:14]:>15}" for w in encoders))
    for name in factors:
        print(f"{name:>64}" + "".join(f"{table[w][name]:15.1f}" for w in encoders))
    if args.out:
        figures = {
            "city_config": args.city_config,
            "poses": args.poses,
            "size": list(args.size),
            "recall_at_1": table,
            "machine": machine(),
        }
        write_text(args.out, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
