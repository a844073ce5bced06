"""Training a model (``zoomloc train``): the zoom model by teacher forcing, or the retrieval baseline.

The paper's recipe for the zoom model: each step feeds the ground-truth path (teacher forcing)
and takes the cross-entropy of every zoom decision, label smoothing 0.1, AdamW with warmup and
cosine decay, gradient clipping at 1.0 — no contrastive loss, no hard negatives. The retrieval
baseline (``model.kind: retrieval``, :mod:`zoomloc.models.retrieval`) goes through the same loop with
its own loss, symmetric InfoNCE over the batch, optionally on batches of GPS neighbours
(:class:`~zoomloc.data.batches.NeighbourOrder`); everything else — data, optimiser, schedule,
checkpoints, validation — is shared, so the two are compared on equal terms. The model kept is
the one with the best **validation Recall@1 within 50 m** (free-running: greedy decoding, or
the top-1 cell of the search), because teacher-forced accuracy hides how errors compound when
the model feeds on its own decisions.

On a CPU the trunk caches (``train.cache_views``, :mod:`zoomloc.data.street_cache`,
:mod:`zoomloc.data.sat_cache`) buy the epochs: the frozen part of each encoder runs once per photo,
view and augmentation, and a step runs only the rest. ``train.place`` adds a place loss on the
street embeddings, on batches that pair photos of one place from two captures
(:mod:`zoomloc.models.place`); ``train.rollout`` trains the policy from its own decisions too
(:mod:`zoomloc.training.rollout`).

A run folder holds ``config.yaml``, ``best.safetensors``, ``last.safetensors`` +
``train_state.pt`` (for ``--resume``), ``metrics.jsonl`` and ``curve.png``. Under
``torchrun --nproc_per_node N`` the same command trains with DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from zoomloc.core.atomic import atomic_path, write_text
from zoomloc.core.config import load_yaml
from zoomloc.core.errors import InputError
from zoomloc.data.batches import NeighbourOrder, PlaceOrder, StepBatches, StreetDataset
from zoomloc.data.photos import AugmentConfig, quiet_on_sigterm
from zoomloc.data.samples import Samples
from zoomloc.data.sat_cache import SatAugmentConfig, SatTrunkCache, sat_trunk_cache, trunk_embeddings
from zoomloc.data.street_cache import CacheViews, StreetCache, street_cache
from zoomloc.data.trunk_cache import variant_of
from zoomloc.evaluation.evaluate import accuracy
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.confidence import calibrate_guess_factor, fit_temperature
from zoomloc.inference.localize import Localizer
from zoomloc.models.base import Batch, LossSettings
from zoomloc.models.checkpoint import BEST, LAST, RUN_CONFIG, TRAIN_STATE, load_train_state, save_checkpoint, save_train_state
from zoomloc.models.embeddings import SatEmbeddings, cached_embeddings, compute_embeddings
from zoomloc.models.encoders import SatTrunks
from zoomloc.models.place import PlaceConfig, multi_similarity_loss, place_pairs
from zoomloc.models.registry import ModelConfig, build_model
from zoomloc.training import distributed
from zoomloc.training.aggregator_fit import fit_aggregators
from zoomloc.training.rollout import rollout, rollout_share

METRICS = "metrics.jsonl"
CURVE = "curve.png"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    encoder_lr_scale: float = 0.1  # pretrained encoder layers move slower than the fresh policy
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    label_smoothing: float = 0.1  # of the zoom steps' cross-entropy
    refine_weight: float = 1.0  # weight of the sub-cell offset loss, when the policy refines
    log_every: int = 20
    val_every: int = 250
    val_queries: int = 512  # a fixed random subset of the validation split
    seed: int = 0
    workers: int = 2
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    cpu_bf16: bool = False  # bfloat16 autocast on a CPU too, where it computes bfloat16 natively (cpu_computes_bf16)
    deterministic: bool = False  # torch deterministic algorithms (slower), for exact reruns
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # The street cache (zoomloc.data.street_cache): 0 encodes every photo live at every step; V >= 1
    # runs the frozen part of the street encoder once, on V augmented crops per photo, and trains
    # only the rest — many epochs on a CPU. A satellite encoder that trains its last blocks gets the
    # same for the map's views (zoomloc.data.sat_cache), V augmented copies each, varied by sat_augment.
    cache_views: int = 0
    sat_augment: SatAugmentConfig = field(default_factory=SatAugmentConfig)
    # The place loss (zoomloc.models.place): street embeddings of one place close across captures, in
    # batches that pair photos with another capture's photo of their place; weight 0: off.
    place: PlaceConfig = field(default_factory=PlaceConfig)
    # Exposure bias (zoomloc.training.rollout): the share of zoom steps fed the policy's own greedy choice
    # instead of the true one, reached linearly over the first rollout_ramp of training.
    rollout: float = 0.0
    rollout_ramp: float = 0.5
    # What a step from a wrong parent learns: the child nearest the truth, or that none holds it.
    rollout_target: Literal["nearest", "uniform"] = "nearest"

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.log_every, self.val_every, self.val_queries) < 1:
            raise ValueError("steps, batch_size, log_every, val_every and val_queries must be positive")
        if self.warmup_steps < 0 or self.workers < 0 or self.lr <= 0 or self.cache_views < 0:
            raise ValueError("warmup_steps, workers and cache_views must not be negative, lr must be positive")
        if not (0 <= self.rollout <= 1 and 0 <= self.rollout_ramp <= 1):
            raise ValueError(f"rollout and rollout_ramp must lie in [0, 1], got {self.rollout} and {self.rollout_ramp}")


@dataclass(frozen=True)
class RunConfig:
    """A training config file: the model and how to train it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        m, t = self.model, self.train
        multiple = m.model_class.batch_multiple(m.settings)
        if t.batch_size % multiple:
            raise ValueError(f"train.batch_size {t.batch_size} must be a multiple of {multiple} for this {m.kind} model's batches")
        if t.rollout and not m.model_class.supports_rollout(m.settings, m.encoder):
            raise ValueError("train.rollout applies to zoom models with a frozen satellite encoder, no refinement and no cell head")
        if t.place.weight and t.batch_size % 2:
            raise ValueError(f"train.place pairs photos in batches: train.batch_size must be even, got {t.batch_size}")
        if t.cache_views and (m.encoder.trainable_groups("street") is None or m.encoder.trainable_groups("sat") is None):
            raise ValueError("train.cache_views needs street and satellite encoders with a frozen part (freeze and sat_freeze not none)")


@dataclass(frozen=True)
class TrainSummary:
    out: Path
    steps: int
    seconds: float
    best: dict[str, Any]

    def describe(self) -> str:
        b = self.best
        val = (
            f"best at step {b['step']}: val R@1@50m {b['recall_at_1']['50']:.1f}%, median error {b['median_error_m']:.1f} m"
            if b
            else "no validation ran"
        )
        return f"trained {self.steps} steps in {self.seconds / 60:.1f} min → {self.out}\n{val}"


def train(
    city_dir: str | os.PathLike,
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainSummary:
    """Train on ``city_dir``'s train split, validate on its val split, write the run to ``out``."""
    out = Path(out)
    run = distributed.setup()
    try:
        return _Trainer(CityDir(city_dir), cfg, out, run, resume, progress).fit()
    finally:
        distributed.teardown()


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates it and
    ``cpu_bf16`` would cost instead of paying: the zoom policy's step on a Xeon with AVX512 but neither
    ran at 245 photos/s under bfloat16 autocast against 581 in float32 (and at 1600 where the
    committed benchmark trained, in bfloat16), so the setting asks for bfloat16 only where it pays."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def load_run_config(path: str | os.PathLike) -> RunConfig:
    return load_yaml(RunConfig, path)


class _Trainer:
    """One training run; its state lives here so the loop reads as the recipe."""

    def __init__(self, city: CityDir, cfg: RunConfig, out: Path, run: distributed.Dist, resume: bool, progress: bool):
        if resume:
            if not (out / RUN_CONFIG).is_file():
                raise InputError(f"nothing to resume: no {RUN_CONFIG}", out)
            cfg = load_run_config(out / RUN_CONFIG)
            state = load_train_state(out / TRAIN_STATE)  # refused before any work, not after
        elif (out / LAST).exists():
            raise InputError("holds a training run already; use --resume to continue it or another --out", out)
        self.cfg, self.tc, self.out, self.run, self.progress = cfg, cfg.train, out, run, progress and run.main
        self.city = city
        # What every checkpoint's info carries: the photos and split it learned from, the street cache it read.
        views = CacheViews(cfg.train.augment, cfg.train.cache_views, cfg.train.seed)
        # The encoder's initial weights name the frozen features the nearest-photo reference compares with.
        self.provenance = {**city.provenance(), "street_cache": views.to_info(), "encoder_weights": str(cfg.model.encoder.weights)}
        elsewhere = city.trained_elsewhere(state) if resume else None
        if elsewhere is not None:
            raise InputError(f"{elsewhere}; start a new run", out)
        if not city.pyramid_path.is_file():
            raise InputError("has no pyramid.h5; run 'zoomloc build-pyramid' first", city.root)
        self.pyramid = PyramidReader(city.pyramid_path)
        grid = self.pyramid.grid
        _seed_everything(self.tc.seed, self.tc.deterministic)
        self.model = build_model(cfg.model, grid).to(run.device)
        tc = self.tc
        self.loss_settings = LossSettings(tc.label_smoothing, tc.refine_weight, lost_uniform=tc.rollout_target == "uniform")
        self.train_samples = Samples.from_city(city, "train", grid)
        if not resume:  # a fresh NetVLAD's centres from training features (a resumed run has them in its state)
            fit_aggregators(self.model.encoders, self.train_samples, self.pyramid, tc.seed)
        if tc.place.weight and self.model.neighbour_groups is not None:
            raise InputError("train.place and the model's neighbour batches both order the training batches; use one", out / RUN_CONFIG)
        self.train_xy = self.train_samples.xy(grid) if tc.place.weight else None  # the place loss's distances
        self.val_samples = Samples.from_city(city, "val", grid).subset(self.tc.val_queries, self.tc.seed)
        self.sat_frozen = cfg.model.encoder.sat_frozen
        self.street_cache = self._main_first(self._street_cache) if self.tc.cache_views else None
        self.sat_trunks = self._main_first(self._sat_trunks) if self.tc.cache_views and not self.sat_frozen else None
        self.sat_cache = self._sat_embeddings() if self.sat_frozen else None
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=self.tc.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step, self.best = 0, {}
        if resume:
            self._restore(state)
        elif run.main:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / RUN_CONFIG, yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False))
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
            if run.world > 1
            else self.model
        )

    # ------------------------------------------------------------------ setup
    def _sat_embeddings(self) -> SatEmbeddings:
        """The embeddings of the views the model reads, under the current satellite weights (cached
        beside the pyramid, with every table, when frozen; from the satellite trunk cache when its tail trains)."""
        encoders, lengths = self.model.encoders, self.model.sat_prefixes
        if self.sat_trunks is not None:
            return trunk_embeddings(encoders, self.sat_trunks, lengths).to(self.run.device)
        if not self.sat_frozen:
            return compute_embeddings(encoders, self.pyramid, lengths=lengths, progress=self.progress).to(self.run.device)
        if self.run.main:
            emb = cached_embeddings(encoders, self.pyramid, lengths=lengths, progress=self.progress)
        self.run.barrier()  # the other ranks read what the main one wrote
        if not self.run.main:
            emb = cached_embeddings(encoders, self.pyramid, lengths=lengths, progress=False)
        return emb.to(self.run.device)

    def _main_first(self, build: Callable[[bool], Any]) -> Any:
        """``build(progress)`` on the main rank, then on the others, which read what it wrote."""
        if self.run.main:
            built = build(self.progress)
        self.run.barrier()
        return built if self.run.main else build(False)

    def _street_cache(self, progress: bool) -> StreetCache:
        """The city's street cache for this model's street trunk."""
        tc = self.tc
        return street_cache(self.model.encoders, self.city, tc.augment, tc.cache_views, tc.seed, workers=tc.workers, progress=progress)

    def _sat_trunks(self, progress: bool) -> SatTrunkCache:
        """The pyramid's satellite trunk cache for this model's satellite trunk."""
        tc = self.tc
        return sat_trunk_cache(
            self.model.encoders, self.pyramid, tc.sat_augment, tc.cache_views, tc.seed, workers=tc.workers, progress=progress
        )

    def _param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: encoder vs policy (or heads) learning rate, no weight decay on norms, biases, embeddings, scales."""
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                key = (name.startswith("encoders."), p.dim() < 2 or "emb" in name)
                groups.setdefault(key, []).append(p)
        return [
            {
                "params": params,
                "lr": self.tc.lr * (self.tc.encoder_lr_scale if encoder else 1.0),
                "weight_decay": 0.0 if no_decay else self.tc.weight_decay,
            }
            for (encoder, no_decay), params in sorted(groups.items())
        ]

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to zero at the last step."""
        if step < self.tc.warmup_steps:
            return (step + 1) / self.tc.warmup_steps
        t = (step - self.tc.warmup_steps) / max(self.tc.steps - self.tc.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def _loader(self, dataset: StreetDataset, **batching: Any) -> DataLoader:
        """A loader of ``dataset``; ``batching`` is ``batch_sampler=`` (training) or ``batch_size=``."""
        return DataLoader(
            dataset,
            **batching,
            num_workers=self.tc.workers,
            worker_init_fn=quiet_on_sigterm,
            pin_memory=self.run.device.type == "cuda",
            # Its own generator: creating a loader then leaves the global RNG (dropout) untouched.
            generator=torch.Generator().manual_seed(self.tc.seed),
        )

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Iterable[Batch]:
        """The training batches from the current step on: photos read live, or their street-cache entries."""
        samples = self.train_samples
        batches = StepBatches(
            len(samples), self.tc.batch_size, self.tc.seed, self.step, self.tc.steps, self.run.rank, self.run.world, self._order()
        )
        if self.street_cache is None:
            dataset = StreetDataset(
                samples,
                self.model.encoders.transforms(),
                self.tc.augment,
                pyramid=None if self.sat_frozen else self.pyramid,
                sat_prefixes=self.model.sat_prefixes,
            )
            return self._loader(dataset, batch_sampler=batches)
        rows = self.street_cache.rows_of(samples.image_ids)

        def cached() -> Iterator[Batch]:
            for step, items in enumerate(batches, start=self.step):
                index, keys = (np.array(v, dtype=np.int64) for v in zip(*items))
                batch = {
                    "trunk": self.street_cache.augmented(rows[index], variant_of(keys, self.street_cache.views)),
                    "path": torch.from_numpy(samples.paths[index]),
                    "offset": torch.from_numpy(samples.offsets[index]),
                    "index": torch.from_numpy(index),
                }
                if self.sat_trunks is not None:  # the views' trunk outputs, one augmented copy per view and step
                    sats = self.sat_trunks.batch(samples.paths[index], self.model.sat_prefixes, self.tc.seed * 1_000_003 + step)
                    batch.update(sat_maps=sats.maps, sat_index=sats.index)
                yield batch

        return cached()

    def fit(self) -> TrainSummary:
        start = time.perf_counter()
        bar = tqdm(total=self.tc.steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        window: list[dict[str, float]] = []
        tick = time.perf_counter()
        for batch in self._batches():
            window.append(self._train_step(batch))
            self.step += 1
            bar.update(1)
            if self.step % self.tc.log_every == 0 or self.step == self.tc.steps:
                seen = len(window) * self.tc.batch_size * self.run.world
                record = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                record.update(step=self.step, lr=self.scheduler.get_last_lr()[0], img_per_s=seen / (time.perf_counter() - tick))
                bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['img_per_s']:.1f}")
                self._log(record)
                window, tick = [], time.perf_counter()
            if self.step % self.tc.val_every == 0 or self.step == self.tc.steps:
                self._validate_and_save()
                tick = time.perf_counter()
        bar.close()
        if self.run.main:
            plot_curve(self.out / METRICS, self.out / CURVE)
        return TrainSummary(self.out, self.step, time.perf_counter() - start, self.best)

    def _order(self) -> NeighbourOrder | PlaceOrder | None:
        """Batches pairing photos of one place (the place loss), or of GPS neighbours (when the model asks for them);
        else random batches."""
        place, groups = self.tc.place, self.model.neighbour_groups
        if place.weight:
            return PlaceOrder.of_samples(self.train_samples, self.pyramid.grid, place)
        return None if groups is None else NeighbourOrder.of_samples(self.train_samples, self.pyramid.grid, *groups)

    def _train_step(self, batch: Batch) -> dict[str, float]:
        self.ddp.train()
        device = self.run.device
        trunk = "trunk" in batch
        images, paths = batch["trunk" if trunk else "image"].to(device, non_blocking=True), batch["path"].to(device)
        share = rollout_share(self.step, self.tc.steps, self.tc.rollout, self.tc.rollout_ramp)
        fed, targets, lost, stats = paths, paths, None, {}
        if share:
            fed, targets, lost = self._rollout(images, trunk, paths, share)
            stats = {"rollout": share}
        # The satellite input: the model's path prefixes' cached view embeddings, or (a training
        # satellite encoder) their views' cached trunk outputs, or their views, read by the loader.
        if self.sat_cache is not None:
            sats = self.sat_cache.of_prefixes(fed, self.model.sat_prefixes)
        elif "sat_maps" in batch:
            sats = SatTrunks(batch["sat_maps"], batch["sat_index"]).to(device)
        else:
            sats = batch["sats"].to(device)
        autocast = self.tc.amp if device.type == "cuda" else self.tc.cpu_bf16 and cpu_computes_bf16()
        place = self.tc.place
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = self.ddp(images, fed, sats, trunk=trunk, with_street=bool(place.weight))
        if place.weight:
            out, street = out
        loss, objective_stats = self.model.loss(out, targets, {**batch, "lost": lost}, self.loss_settings)
        stats.update(objective_stats)
        if place.weight:
            place_loss = self._place_loss(self.model.place_embedding(street), batch["index"].numpy())
            loss = loss + place.weight * place_loss
            stats["place"] = place_loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), **stats}

    def _place_loss(self, street: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """The place loss (:mod:`zoomloc.models.place`) of a batch's street embeddings, its pairs from the
        training samples' positions, headings and captures."""
        s = self.train_samples
        positive, negative = place_pairs(self.train_xy[index], s.heading_deg[index], s.captures[index], self.tc.place)
        device = street.device
        return multi_similarity_loss(street, torch.from_numpy(positive).to(device), torch.from_numpy(negative).to(device))

    def _rollout(
        self, images: torch.Tensor, trunk: bool, paths: torch.Tensor, share: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paths to feed, step targets and wrong-parent steps when ``share`` of the steps follow the policy's own
        choice (:mod:`zoomloc.training.rollout`).

        The rollout runs in eval mode, as inference does, from a generator seeded by the step, so
        a resumed run draws what an uninterrupted one would.
        """
        self.model.eval()
        try:
            with torch.no_grad():
                street = self.model.encode_street(images, trunk=trunk)
            generator = torch.Generator().manual_seed(self.tc.seed * 1_000_003 + self.step)
            return rollout(self.model.policy, street, self.sat_cache.of_paths, self.pyramid.grid, paths, share, generator)
        finally:
            self.model.train()

    # ------------------------------------------------------------------ validation and checkpoints
    def evaluate(self, samples: Samples) -> dict[str, Any]:
        """Free-running localization of ``samples`` (greedy decoding, or the search's top cell): recall and errors,
        and the temperature and guess factor fitted on them."""
        sat = self.sat_cache if self.sat_cache is not None else self._sat_embeddings()
        loc = Localizer(self.model, sat, self.run.device)
        street = loc.embed_samples(samples, workers=self.tc.workers, cache=self.street_cache)
        # Stored with a selected checkpoint: what every search divides the logits by (it changes no greedy answer).
        temperature = fit_temperature(*loc.index.calibration_logits(street, samples.paths))
        loc.index.temperature = temperature
        results, metrics = accuracy(loc, street, samples, beam=1)
        metrics["temperature"] = temperature
        if self.model.first_step_calibrated:  # stored with a selected checkpoint: when localize warns of a guess
            first = [r.path[0] for r in results]
            right = np.array([r.actions[0] for r in results]) == samples.paths[:, 0]
            metrics["guess_factor"] = calibrate_guess_factor(np.array([s.probability for s in first]), right, self.model.grid.k**2)
        return metrics

    def _validate_and_save(self) -> None:
        if self.run.main:
            metrics = self.evaluate(self.val_samples)
            metrics["step"] = self.step
            self._log({"step": self.step, **{f"val_{k}": v for k, v in metrics.items() if k != "step"}})
            score = (metrics["recall_at_1"]["50"], -metrics["median_error_m"])
            if not self.best or score > (self.best["recall_at_1"]["50"], -self.best["median_error_m"]):
                self.best = metrics
                save_checkpoint(self.out / BEST, self.model, {"step": self.step, **self.provenance, "val": metrics})
            save_checkpoint(self.out / LAST, self.model, {"step": self.step, **self.provenance})
            save_train_state(
                self.out / TRAIN_STATE,
                {
                    "step": self.step,
                    "split": self.provenance["split"],
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "best": json.dumps(self.best),
                    "torch_rng": torch.get_rng_state(),
                },
            )
        self.run.barrier()

    def _restore(self, state: dict[str, Any]) -> None:
        # The weights saved with the optimizer, not last.safetensors: a run killed between the
        # two writes leaves that file one checkpoint ahead of this state.
        if "model" not in state:
            raise InputError(f"{TRAIN_STATE} holds no model weights (written by an older zoomloc); start a new run", self.out)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best = int(state["step"]), json.loads(state["best"])
        torch.set_rng_state(state["torch_rng"])
        if self.run.main:
            _truncate_log(self.out / METRICS, self.step)

    def _log(self, record: dict[str, Any]) -> None:
        if self.run.main:
            with open(self.out / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` by an interrupted run, so a resumed log reads as one run."""
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if json.loads(ln)["step"] <= step]
        write_text(path, "".join(ln + "\n" for ln in lines))


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _plain(value: Any) -> Any:
    """Dataclass dicts with tuples and paths as YAML-safe lists and strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def plot_curve(metrics_path: Path, png: Path) -> None:
    """Training loss and validation Recall@1 within 50 m against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(ln) for ln in metrics_path.read_text(encoding="utf-8").splitlines()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_recall_at_1"]["50"]) for r in records if "val_recall_at_1" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", label="val R@1 ≤ 50 m (%)", color="tab:orange")
        ax2.set_ylabel("val Recall@1 within 50 m (%)")
        ax2.set_ylim(0, 100)
    fig.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
