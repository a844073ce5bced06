"""How much of a synthetic photo's place its ground's shadows give away, with no training at all.

Until the seventeenth session the generator painted every street photo's ground with the
orthophoto's own colours, cast shadows included, so every capture of a street showed the same
shadows, as no two real captures at other hours do; now each capture casts its own sun's
(``data_prep.capture.CAPTURE_SUNS``). This probe measures what that likeness was worth to a method
that looks at the ground, and that it is gone: each of ``--frames`` fresh frames of a synthetic
city's captures is rendered three times, with the orthophoto's shadows (as the city's photos were),
with its capture's own sun's (as they are) and with those of one other sun, and its ground is
matched against the whole orthophoto:

- the ground below the horizon, ``--near`` to ``--far`` metres ahead, is projected to a north-up
  bird's-eye view at ``--gsd`` metres by the frame's heading and field of view (a flat ground, the
  camera at 1.75 m, no pitch: what a photo's metadata gives), the inverse perspective mapping of
  cross-view metric localization;
- its masked normalised cross-correlation with the orthophoto is computed at every position by FFT,
  and the best position is the answer.

Recall@1 within 25 / 50 / 100 m of the true camera, per rendering. A large gap between the two
says that ground-level figures on these cities measure the generator, not a method. ``benchmarks/
capture_factors.py`` asks the street encoders the same ("cast shadows of another sun").

    python benchmarks/ground_shadows.py [--city-config configs/cities/bench.yaml] [--frames 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from capture_factors import OTHER_SUN, REPO, render  # benchmarks/ is the script's folder

from data_prep.capture import capture_surfaces, sample_sequences
from data_prep.overhead import surface_colours
from data_prep.scene import build_scene
from data_prep.street import StreetRenderer, Views
from data_prep.synth import SynthCityConfig

CAMERA_H = 1.75  # metres: a photo's metadata does not say; the bench cameras are 1.3-2.0 m up
RADII_M = (25, 50, 100)


class GroundMatcher:
    """Masked normalised cross-correlation of a bird's-eye ground patch with a whole orthophoto.

    The orthophoto's spectra (of its colours and their squares) are taken once; a query costs three
    correlations per colour channel (the patch, and the mask against the colours and their squares),
    each a forward and an inverse FFT of the orthophoto's size.
    """

    def __init__(self, ortho: np.ndarray, gsd: float, near_m: float, far_m: float):
        self.gsd, self.near, self.far = gsd, near_m, far_m
        self.half = int(far_m / gsd)  # the patch is 2·half cells a side, the camera at its centre
        image = torch.from_numpy(ortho.astype(np.float32)).permute(2, 0, 1)  # [3, H, W]
        self.size = image.shape[1:]
        self.fft_shape = (self.size[0] + 2 * self.half, self.size[1] + 2 * self.half)
        self.spectrum = torch.fft.rfft2(image, s=self.fft_shape)
        self.spectrum_sq = torch.fft.rfft2(image * image, s=self.fft_shape)

    def ground(self, photo: np.ndarray, heading_deg: float, fov_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The photo's ground as a north-up patch ``[3, P, P]`` and where it is seen ``[P, P]``."""
        h, w = photo.shape[:2]
        focal = w / 2 / np.tan(np.radians(fov_deg) / 2)
        offsets = (np.arange(2 * self.half) - self.half + 0.5) * self.gsd
        east, north = np.meshgrid(offsets, -offsets)  # row 0 north, as the orthophoto
        a = np.radians(heading_deg)
        ahead = east * np.sin(a) + north * np.cos(a)
        right = east * np.cos(a) - north * np.sin(a)
        depth = np.maximum(ahead, 1e-3)
        grid = np.stack([right / depth * focal / (w / 2), (CAMERA_H * focal / depth) / (h / 2)], -1)  # [-1, 1] coordinates
        seen = (ahead >= self.near) & (ahead <= self.far) & (np.abs(grid) <= 1).all(-1)
        image = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
        patch = F.grid_sample(image, torch.from_numpy(grid)[None].float(), padding_mode="border", align_corners=False)[0]
        return patch, torch.from_numpy(seen.astype(np.float32))

    def _correlate(self, spectrum: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Σ kernel · image over the kernel's window at every top-left corner where it fits."""
        product = spectrum * torch.fft.rfft2(torch.flip(kernel, (-2, -1)), s=self.fft_shape)
        side = 2 * self.half
        return torch.fft.irfft2(product, s=self.fft_shape)[..., side - 1 : self.size[0], side - 1 : self.size[1]]

    def best_position(self, photo: np.ndarray, heading_deg: float, fov_deg: float) -> tuple[float, float]:
        """(row, col) in orthophoto cells of the best-matching camera position."""
        patch, seen = self.ground(photo, heading_deg, fov_deg)
        count = seen.sum()
        centred = (patch - (patch * seen).sum((1, 2), keepdim=True) / count) * seen
        mask = seen.expand(3, -1, -1)
        total = self._correlate(self.spectrum, mask)
        variance = (self._correlate(self.spectrum_sq, mask) - total * total / count).clamp_min(1e-3)
        norm = centred.pow(2).sum((1, 2), keepdim=True).sqrt()
        score = (self._correlate(self.spectrum, centred) / variance.sqrt() / norm).mean(0)
        row, col = divmod(int(score.argmax()), score.shape[1])
        return row + self.half, col + self.half


def recall(matcher: GroundMatcher, photos: list[np.ndarray], views: Views, scene_gsd: float) -> dict[int, float]:
    """Recall@1 (%) within each of RADII_M of the frames' true positions."""
    errors = []
    for i, photo in enumerate(photos):
        row, col = matcher.best_position(photo, float(views.heading_deg[i]), float(views.fov_deg[i]))
        errors.append(np.hypot(row * matcher.gsd - views.row[i] * scene_gsd, col * matcher.gsd - views.col[i] * scene_gsd))
    errors = np.array(errors)
    return {r: 100.0 * float((errors <= r).mean()) for r in RADII_M}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--city-config", default="configs/cities/bench.yaml", help="a synthetic city's config (from the repository root)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--gsd", type=float, default=1.0, help="metres per cell of the match (a multiple of the city's)")
    ap.add_argument("--near", type=float, default=4.0, help="nearest ground used, metres ahead")
    ap.add_argument("--far", type=float, default=20.0, help="farthest ground used, metres ahead")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = SynthCityConfig.from_yaml(REPO / args.city_config)
    step = round(args.gsd / cfg.gsd)
    if step < 1 or abs(step * cfg.gsd - args.gsd) > 1e-6:
        raise SystemExit(f"--gsd must be a multiple of the city's {cfg.gsd} m, got {args.gsd}")
    t0 = time.perf_counter()
    scene = build_scene(cfg.scene, cfg.size_m, cfg.gsd, cfg.seed)
    surface = surface_colours(scene, cfg.sun, cfg.seed)  # the orthophoto, before its sensor noise
    rng = np.random.default_rng(args.seed)
    frames = sample_sequences(scene, cfg.camera, cfg.capture, 20 * args.frames, rng).views
    views = frames.subset(np.sort(rng.choice(len(frames), args.frames, replace=False)))
    own = capture_surfaces(scene, views, cfg.seed)
    renderings = {
        "the orthophoto's shadows (as the city's photos were)": StreetRenderer(scene, dict.fromkeys(own, surface), cfg.camera),
        "the capture's own sun's (as the city's photos are)": StreetRenderer(scene, own, cfg.camera),
        "another sun's shadows": StreetRenderer(scene, dict.fromkeys(own, surface_colours(scene, OTHER_SUN, cfg.seed)), cfg.camera),
    }
    photos = {name: [p.permute(1, 2, 0).numpy() for p in render(r, views, 1)] for name, r in renderings.items()}
    n = surface.shape[0] // step * step
    ortho = surface[:n, :n].reshape(n // step, step, n // step, step, 3).mean((1, 3))
    matcher = GroundMatcher(ortho, args.gsd, args.near, args.far)
    prepared_s = time.perf_counter() - t0

    ground = f"ground {args.near:g}-{args.far:g} m ahead at {args.gsd:g} m"
    print(f"{args.city_config}: {args.frames} frames, {ground}; prepared in {prepared_s:.0f} s")
    for name, shot in photos.items():
        t1 = time.perf_counter()
        figures = recall(matcher, shot, views, cfg.gsd)
        per_frame = (time.perf_counter() - t1) / args.frames
        within = " / ".join(f"{figures[r]:.1f}" for r in RADII_M)
        print(f"{name:>50}: R@1 within {' / '.join(map(str, RADII_M))} m {within} %  ({per_frame:.2f} s per frame)")


if __name__ == "__main__":
    main()
