"""A localizer given its city's training photos as a second witness (:mod:`zoomloc.inference.photo_prior`).

The photos are the ones the model trained on, so they are read from the city the model trained
on: its split's training photos, their street embeddings from the street cache the model trained
with (built once where it is missing, as training builds it), and the witness's weight fitted on
the split's val photos. The fit takes seconds to a minute on a large city, so it is kept beside
the cache (``photo_prior_<key>.json``, the key naming the checkpoint, the photos, the split and the
beam) and a later query pays only the search among the photos. Where the street encoder has a
mid-level map to match photos by, the city's local cache (built once, as the street cache is) lets
the fit try re-ranking the photos by their maps, plain or through a head fitted on the training photos
across captures (:mod:`zoomloc.inference.local_head`, fitted once per split and kept beside the cache),
and the queries' maps go with them where it pays.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from zoomloc.core.atomic import write_text
from zoomloc.core.errors import InputError
from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import CacheViews, local_cache, street_cache
from zoomloc.geo.citydir import CityDir
from zoomloc.inference.local_head import local_head
from zoomloc.inference.local_match import LocalMaps
from zoomloc.inference.localize import Localizer
from zoomloc.inference.photo_prior import PhotoDatabase, PhotoPriorConfig, PhotoPriorIndex, fit_photo_prior
from zoomloc.models.base import Clues
from zoomloc.models.checkpoint import read_info, resolve_checkpoint

# 2: the heading limit too, 3: the re-ranking too, 4: the local head too, 5: its depth too; an earlier version's fit is
# not read back
FIT_VERSION = 5
SELECTION_M = 50.0  # what a checkpoint is selected by (R@1 within 50 m), and so what the witness's weight is fitted for


@dataclass(frozen=True)
class PhotoWitness:
    """What the training photos were fitted to say: the config, how many photos, and the val share placed
    within :data:`SELECTION_M` by the model with them (``val_recall_at_1_50``, %)."""

    config: PhotoPriorConfig
    photos: int
    val_recall_at_1_50: float
    fit_s: float  # this call's: 0 when the fit was read back

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": dataclasses.asdict(self.config)}


def with_training_photos(
    loc: Localizer, model_path: str | os.PathLike, city: CityDir, *, beam: int = 1, workers: int = 2, progress: bool = False
) -> tuple[Localizer, PhotoWitness]:
    """``loc`` (loaded from ``model_path``) answering with ``city``'s training photos too, and what was fitted.

    Refused (:class:`InputError`) when the model trained on other photos or another split of them: its
    training photos are then unknown, and this split's may include the very photos being localized.
    """
    info = read_info(model_path)
    elsewhere = city.trained_elsewhere(info) if "photos" in info else "records no photos it trained on"
    if elsewhere is not None:
        raise InputError(f"the model {elsewhere}, so its training photos are not known here: localize without --with-photos")
    grid = loc.model.grid
    cv = CacheViews.of_info(info)
    cache = None
    if loc.model.encoder_cfg.freeze != "none":  # a street encoder trained whole has no trunk to cache
        cache = street_cache(loc.model.encoders, city, cv.augment, views=cv.views, seed=cv.seed, workers=workers, progress=progress)
    train, val = Samples.from_city(city, "train", grid), Samples.from_city(city, "val", grid)
    fit_path = city.embeddings_dir / f"photo_prior_{_key(model_path, city, beam)}.json"
    kept = json.loads(fit_path.read_text()) if fit_path.is_file() else None
    local = None
    if loc.model.encoders.street_local_cut is not None and (kept is None or kept["config"].get("rerank", 0)):
        local = LocalMaps(local_cache(loc.model.encoders, city, workers=workers, progress=progress), loc.model.encoders)
    try:
        street = loc.embed_samples(train, cache=cache, workers=workers)
        maps = None if local is None else (local, local.cache.rows_of(train.image_ids))
        database = PhotoDatabase.of(street, train.lon, train.lat, grid, loc.model.place_embedding, train.heading_deg, maps)

        def through_head() -> LocalMaps | None:
            """The city's maps through the head fitted on these training photos, fitted once and then read back
            (None: nothing to fit it on)."""
            head = local_head(local, city, train.image_ids, train.xy(grid), train.heading_deg, train.captures)
            return None if head is None else dataclasses.replace(local, head=head)

        if kept is not None:
            witness = PhotoWitness(PhotoPriorConfig(**kept["config"]), len(database), kept["val_recall_at_1_50"], 0.0)
        else:
            if len(val) == 0:
                raise InputError("the split has no val photos to fit the training photos' weight on", city.split_csv)
            start = time.perf_counter()
            val_street = loc.embed_samples(val, cache=cache, workers=workers)
            clues = Clues(val.heading_deg, None if local is None else local.of_ids(val.image_ids))
            head = None if local is None else through_head
            cfg, tried = fit_photo_prior(
                loc.index, database, grid, val_street, val.xy(grid), within_m=SELECTION_M, beam=beam, clues=clues, through_head=head
            )
            witness = PhotoWitness(cfg, len(database), max(tried.values()), time.perf_counter() - start)
            fit_path.parent.mkdir(exist_ok=True)
            write_text(fit_path, json.dumps(witness.to_json(), indent=2) + "\n")
        fitted = through_head() if witness.config.local_head else None  # read back: the fit kept it
    except BaseException:
        if local is not None:
            local.cache.close()
        raise
    finally:
        if cache is not None:
            cache.close()
    if local is not None and not witness.config.rerank:  # the fit found no gain in the maps: queries need none
        local.cache.close()
        database, local = dataclasses.replace(database, local=None, local_rows=None), None
    elif fitted is not None:  # the maps through the head, the photos' and the queries'
        database, local = dataclasses.replace(database, local=fitted), fitted
    both = copy.copy(loc)
    both.index = PhotoPriorIndex(loc.index, database, grid, witness.config)
    both.local = local
    return both, witness


def _key(model_path: str | os.PathLike, city: CityDir, beam: int) -> str:
    """What a fit depends on: the checkpoint's bytes, the city's photos and split, the beam it decoded with and
    what a fit chooses (:data:`FIT_VERSION`)."""
    h = hashlib.sha256(resolve_checkpoint(model_path).read_bytes())
    h.update(json.dumps({**city.provenance(), "beam": beam, "fit": FIT_VERSION}, sort_keys=True).encode())
    return h.hexdigest()[:16]
