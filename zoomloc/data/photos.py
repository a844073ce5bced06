"""Reading street photos and augmenting them as crowd-sourced photos look.

Augmentation imitates crowd-sourced photos (exposure and colour shifts, blur, JPEG artefacts;
the encoder's transform adds the random crop), because a model trained on clean renders would
fail on a phone's snapshot.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import torch
import torchvision.transforms.v2 as T
from PIL import Image, ImageOps

from zoomloc.core.errors import InputError
from zoomloc.core.exif import read_photo_exif
from zoomloc.models.encoders import ViewTransforms


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric and geometric augmentation of street views at training time (probabilities and strengths).

    What differs between two captures of one street is mostly the camera and the light: exposure
    and contrast (``colour``), white balance (``white_balance``: per-channel gains), the tone curve
    (``gamma``), haze or a low sun's glare (``haze``: a blend towards light grey), sensor noise
    (``noise``), a tilted phone (``roll_deg``), focus and motion (``blur_p``) and compression
    (``jpeg_p``); and what stands in the street: passers-by and cars in front of the facades
    (``erase_p``: a random upright box painted one random colour). A narrower lens sees the middle
    of a wider one's view (``fov_zoom``: a random window of 1/z of each side, z drawn in
    [1, fov_zoom], which the encoder's cover crop then enlarges to its input). The defaults of the
    newer ones leave them off, so a config that does not name them trains as before.
    """

    colour: float = 0.3  # ColorJitter strength for brightness, contrast, saturation (hue: a third)
    blur_p: float = 0.2
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)
    white_balance: float = 0.0  # each channel's gain drawn in [1 - w, 1 + w]
    gamma: tuple[float, float] = (1.0, 1.0)  # the tone curve's exponent, drawn in [low, high]
    haze: float = 0.0  # a blend towards light grey of strength drawn in [0, haze]
    noise: float = 0.0  # Gaussian sensor noise of standard deviation drawn in [0, noise] grey levels
    roll_deg: float = 0.0  # the camera's roll, drawn in [-roll_deg, roll_deg]
    erase_p: float = 0.0  # probability of an occluder: an upright box of 2–12 % of the image
    fov_zoom: float = 1.0  # the narrowest field of view drawn, as a zoom factor of the photo's

    def __post_init__(self) -> None:
        if not (0 <= self.colour <= 1 and 0 <= self.blur_p <= 1 and 0 <= self.jpeg_p <= 1):
            raise ValueError("augment strengths and probabilities must lie in [0, 1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be [low, high] within 1..100, got {self.jpeg_quality}")
        if not (0 <= self.white_balance < 1 and 0 <= self.haze <= 1 and self.noise >= 0 and 0 <= self.roll_deg <= 45):
            raise ValueError("white_balance must lie in [0, 1), haze in [0, 1], noise be ≥ 0 and roll_deg in [0, 45]")
        if not (0 <= self.erase_p <= 1 and 1 <= self.fov_zoom <= 3):
            raise ValueError(f"erase_p must lie in [0, 1] and fov_zoom in [1, 3], got {self.erase_p} and {self.fov_zoom}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must be [low, high] with 0 < low <= high, got {self.gamma}")

    def build(self) -> T.Transform:
        """The transform on uint8 ``[3, H, W]`` tensors (random draws from torch's global generator)."""
        c = self.colour
        return T.Compose(
            [
                *([_FieldOfView(self.fov_zoom)] if self.fov_zoom > 1 else []),
                T.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 3, 0.5)),
                *(
                    [CameraColour(self.white_balance, self.gamma, self.haze)]
                    if (self.white_balance, self.gamma, self.haze) != (0, (1, 1), 0)
                    else []
                ),
                *([T.RandomRotation(self.roll_deg, interpolation=T.InterpolationMode.BILINEAR)] if self.roll_deg else []),
                T.RandomApply([T.GaussianBlur(5, sigma=(0.3, 1.5))], p=self.blur_p),
                *([_Noise(self.noise)] if self.noise else []),
                *([_Occluder(self.erase_p)] if self.erase_p else []),
                T.RandomApply([_Jpeg(self.jpeg_quality)], p=self.jpeg_p),
            ]
        )


def _uniform(low: float, high: float, size: tuple[int, ...] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(size)


class CameraColour(torch.nn.Module):
    """Another camera's colour: per-channel white-balance gains, a gamma curve, then haze (a blend
    towards light grey), on a uint8 ``[3, H, W]`` image."""

    def __init__(self, white_balance: float, gamma: tuple[float, float], haze: float):
        super().__init__()
        self.white_balance, self.gamma, self.haze = white_balance, gamma, haze

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float() / 255
        x = x * _uniform(1 - self.white_balance, 1 + self.white_balance, (3, 1, 1))
        x = x.clamp(0, 1) ** _uniform(*self.gamma)
        x = torch.lerp(x, torch.full_like(x, 0.85), _uniform(0, self.haze))
        return (x * 255).round().clamp(0, 255).to(torch.uint8)


class _Noise(torch.nn.Module):
    """Gaussian sensor noise of a random strength up to ``sigma`` grey levels, on a uint8 ``[3, H, W]`` image."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        noisy = image.float() + torch.randn(image.shape) * _uniform(0, self.sigma)
        return noisy.round().clamp(0, 255).to(torch.uint8)


class _FieldOfView(torch.nn.Module):
    """A narrower lens: a random window of 1/z of each side of a uint8 ``[3, H, W]`` image, z in [1, max_zoom]."""

    def __init__(self, max_zoom: float):
        super().__init__()
        self.max_zoom = max_zoom

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        zoom = float(_uniform(1.0, self.max_zoom))
        h, w = max(1, round(height / zoom)), max(1, round(width / zoom))
        top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
        return image[:, top : top + h, left : left + w]


class _Occluder(torch.nn.Module):
    """With probability ``p``, an upright box (taller than wide, 2–12 % of the image) of one random
    colour on a uint8 ``[3, H, W]`` image: a passer-by or a parked car hiding part of the street."""

    def __init__(self, p: float):
        super().__init__()
        self.erase = T.RandomErasing(p=p, scale=(0.02, 0.12), ratio=(1.0, 4.0), value=0)  # ratio: height / width

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        colour = torch.randint(0, 256, (3, 1, 1), dtype=torch.uint8)
        mask = self.erase(torch.ones((1, *image.shape[-2:]), dtype=torch.uint8)) == 0
        return torch.where(mask, colour, image)


class _Jpeg(torch.nn.Module):
    """Re-encode a uint8 ``[3, H, W]`` image as JPEG at a random quality (Pillow's codec).

    torchvision's own JPEG transform goes through its deprecated image I/O; Pillow's encoder is
    also what most photo pipelines that produce the artefacts use.
    """

    def __init__(self, quality: tuple[int, int]):
        super().__init__()
        self.quality = quality

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        buffer = io.BytesIO()
        T.functional.to_pil_image(image).save(buffer, format="JPEG", quality=q)
        buffer.seek(0)
        with Image.open(buffer) as img:
            return T.functional.pil_to_tensor(img.convert("RGB"))


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """The image file at ``path``, open; any failure to read it, here or while decoding it in the
    ``with`` block, is one line naming the file."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise InputError("no such photo", path) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"not a readable image ({str(exc).splitlines()[0]})", path) from None


def _upright(img: Image.Image) -> Image.Image:
    return ImageOps.exif_transpose(img).convert("RGB")


def load_photo(path: str | Path) -> Image.Image:
    """An RGB photo, upright per its EXIF orientation; one-line error for unreadable files."""
    with _opened(path) as img:
        return _upright(img)


@dataclass(frozen=True)
class Photo:
    """A user's photo read once: its pixels, upright, and what its EXIF says, if anything: the
    position its GPS gives, the way its camera faced and when it was taken (a photo without any of
    them is still localized).

    ``time_problem`` says why a capture time that is written could not be read: a single photo
    does not need its time, but a track (:mod:`zoomloc.inference.captures`) must not place the
    photo by a guess and refuses it.
    """

    path: Path
    image: Image.Image
    gps: tuple[float, float] | None  # (lon, lat)
    captured_at: datetime | None = None  # EXIF DateTimeOriginal; aware when EXIF gives its UTC offset
    time_problem: str | None = None
    sequence_id: str | None = None  # the capture, where the camera app wrote it (Mapillary's app does)
    heading_deg: float | None = None  # GPSImgDirection: the photo witness compares it with its photos' headings

    @classmethod
    def read(cls, path: str | Path) -> Photo:
        with _opened(path) as img:
            exif = read_photo_exif(img)
            gps = None if exif.gps is None else (exif.gps.lon, exif.gps.lat)
            heading = None if exif.gps is None else exif.gps.heading_deg
            return cls(Path(path), _upright(img), gps, exif.captured_at, exif.time_problem, exif.sequence_id, heading)


def quiet_on_sigterm(worker_id: int) -> None:
    """A data loader's ``worker_init_fn``: on SIGTERM its workers leave at once and silently.

    A terminal's or a scheduler's SIGTERM goes to the whole process group; the main process
    unwinds (``zoomloc.cli.main``) and prints its one-line notice. A worker must neither die *of* the
    signal (torch's SIGCHLD handler in the main process would then raise "DataLoader worker is
    killed by signal" during the shutdown) nor keep running (its threads print tracebacks once the
    main process stops talking to them); exiting with status 0, which torch does not report, does
    neither.

    The main process may also stop in the middle of taking a batch: torch hands its tensors over as
    file descriptors, sent by a thread of the worker (multiprocessing's resource sharer), which then
    finds its peer gone and prints the connection error through ``sys.excepthook`` — at times before
    the worker's own SIGTERM handler has run. In a worker nothing else calls that hook (torch sends a
    dataset's errors to the main process), and a lost connection to the main process means it is
    stopping, which it reports itself: those errors are dropped, any other is printed as before.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    sys.excepthook = _silent_when_peer_is_gone(sys.excepthook)


def _silent_when_peer_is_gone(excepthook: Callable[..., object]) -> Callable[..., object]:
    """``excepthook``, but silent for the errors of a connection whose other end went away."""

    def hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> object:
        return None if issubclass(kind, EOFError | ConnectionError) else excepthook(kind, value, traceback)

    return hook


def street_input(photo: str | Path, transforms: ViewTransforms, augment: T.Transform | None = None, key: int | None = None) -> torch.Tensor:
    """The street encoder's input ``[n, 3, h, w]`` for a photo: plain (centre crop) without ``key``,
    else ``augment`` and a random crop drawn from a generator seeded by ``key``.

    Seeded by ``key`` alone, an augmentation is the same in any process, worker or resumed run:
    the live training loader and the street cache (:mod:`zoomloc.data.street_cache`) draw it alike.
    """
    image = T.functional.pil_to_tensor(load_photo(photo))
    if augment is None or key is None:
        return transforms.street(image)
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
        torch.manual_seed(key)
        image = augment(image)
        return transforms.street(image, train=True, rng=random.Random(key))
