"""The contrastive retrieval baseline: its loss, its batches, its training, search, checkpoints and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, changed_sat_weights, write_run_config  # tests/ is on sys.path under pytest

from zoomloc.cli.main import main
from zoomloc.data.batches import NeighbourOrder, StepBatches
from zoomloc.data.samples import Samples
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import geodesic_m
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.localize import Localizer
from zoomloc.models.checkpoint import load_model, save_checkpoint
from zoomloc.models.contrastive import contrastive_logits, info_nce
from zoomloc.models.retrieval import RetrievalModel
from zoomloc.training.trainer import load_run_config

STEPS = 100
SAT_NEIGHBOUR_RUN = """
model:
  kind: retrieval
  encoder: {street_size: [32, 64], sat_size: 32, freeze: all, sat_freeze: all_but_last_1}
  retrieval: {dim: 32, neighbour_batching: true, neighbour_radius_m: 60, neighbour_group: 4}
train: {steps: 4, batch_size: 8, val_every: 4, val_queries: 16, log_every: 2, workers: 0}
"""


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def retrieval_run(tiny_city, tmp_path_factory) -> Path:
    """A retrieval model trained for 100 steps on ``tiny_city`` (frozen backbones, heads trained)."""
    tmp = tmp_path_factory.mktemp("retrieval_run")
    config = write_run_config(tmp, steps=STEPS, val_every=STEPS // 2, kind="retrieval")
    assert main(["train", str(tiny_city), "--config", str(config), "--out", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


# ---------------------------------------------------------------------- loss
def test_info_nce_is_symmetric_near_zero_when_aligned_and_log_b_when_random():
    street, sat = _unit(16, 512, seed=1), _unit(16, 512, seed=2)
    one_way = info_nce(contrastive_logits(street, sat, 10.0))
    assert one_way == pytest.approx(float(info_nce(contrastive_logits(sat, street, 10.0))), rel=1e-6)
    aligned = torch.eye(16, 32)  # unit embeddings, each pair its own direction
    assert info_nce(contrastive_logits(aligned, aligned, 100.0)) < 1e-6
    # Random directions in 512 dims are nearly orthogonal: every pair looks alike, loss ≈ log B.
    assert info_nce(contrastive_logits(street, sat, 1.0)) == pytest.approx(math.log(16), abs=0.05)


def test_photos_of_one_cell_are_not_each_others_negatives():
    """Pairs 0 and 1 share a cell, hence the same satellite crop: unmasked, each costs log 2 however aligned."""
    street = torch.eye(4, 8)[[0, 0, 1, 2]]
    sat = street.clone()  # perfectly aligned; rows 0 and 1 the same image
    cells = torch.tensor([7, 7, 3, 5])
    assert info_nce(contrastive_logits(street, sat, 100.0)) == pytest.approx(math.log(2) / 2)  # 2 of 4 pairs
    masked = contrastive_logits(street, sat, 100.0, cells)
    assert masked[0, 1] == masked[1, 0] == float("-inf") and torch.isfinite(masked.diagonal()).all()
    assert info_nce(masked) < 1e-6
    # The mask removes exactly those pairs: pair 2's loss is the same as without it.
    plain = contrastive_logits(street, sat, 100.0)
    torch.testing.assert_close(F.cross_entropy(masked[2:], torch.arange(2, 4)), F.cross_entropy(plain[2:], torch.arange(2, 4)))


# ---------------------------------------------------------------------- neighbour batches
def test_neighbour_batches_group_nearby_photos_of_distinct_cells(tiny_city):
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid = pyr.grid
    samples = Samples.from_city(CityDir(tiny_city), "train", grid)
    radius, group = 60.0, 4
    order = NeighbourOrder.of_samples(samples, grid, radius, group)
    cells = grid.cell_of_path(samples.paths)
    groups = order.groups(torch.Generator().manual_seed(5))
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(samples)))  # a permutation: every photo once per epoch
    full = [g for g in groups if len(g) == group]
    assert len(full) * group > 0.8 * len(samples), "nearly every photo finds neighbours on the tiny city"
    assert groups[: len(full)] == full  # full groups first, so batches are made of whole groups
    for g in full:
        d = geodesic_m(samples.lon[g[0]], samples.lat[g[0]], samples.lon[g], samples.lat[g])
        assert d.max() <= radius + 0.5, d  # metres: geodesic vs grid-CRS distance
        assert len(set(cells[g])) == group
    # Deterministic per generator seed; DDP ranks deal whole groups of one order.
    assert torch.equal(order(torch.Generator().manual_seed(5)), torch.tensor(flat))
    assert not torch.equal(order(torch.Generator().manual_seed(6)), torch.tensor(flat))
    ranks = [list(StepBatches(len(samples), 8, 0, 0, 3, rank=r, world=2, order=order)) for r in (0, 1)]
    epoch0 = order(torch.Generator().manual_seed(0)).tolist()
    dealt = [i for step in range(3) for r in (0, 1) for i, _ in ranks[r][step]]
    assert dealt == epoch0[: len(dealt)]


# ---------------------------------------------------------------------- training and what it guarantees
def test_training_lowers_the_loss_and_beats_random_cells(retrieval_run, tiny_city):
    records = _records(retrieval_run)
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
    val = [r for r in records if "val_recall_at_1" in r]
    assert [r["step"] for r in val] == [STEPS // 2, STEPS]
    assert "val_step_accuracy" not in val[-1]
    # Random-cell baseline: the expected Recall@1 within 50 m of a uniformly drawn terminal cell.
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid = pyr.grid
    samples = Samples.from_city(CityDir(tiny_city), "val", grid)
    assert val[-1]["val_n_queries"] == len(samples)  # val_queries 200 > the split: every photo
    centres = grid.centre_lonlat_of_path(grid.path_of_cell(grid.levels, np.arange(grid.n_cells(grid.levels))))
    chance = 100 * np.mean(geodesic_m(centres[0][None], centres[1][None], samples.lon[:, None], samples.lat[:, None]) <= 50)
    assert 1 < chance < 10
    assert val[-1]["val_recall_at_1"]["50"] >= 2 * chance, (val[-1]["val_recall_at_1"], chance)
    _, info = load_model(retrieval_run)
    assert info["val"]["recall_at_1"]["50"] == max(r["val_recall_at_1"]["50"] for r in val)


def test_checkpoint_reloads_to_identical_outputs(retrieval_run, tmp_path):
    model, _ = load_model(retrieval_run)
    assert isinstance(model, RetrievalModel) and model.kind == "retrieval"
    save_checkpoint(tmp_path / "m.safetensors", model, {"note": "x"})
    again, info = load_model(tmp_path / "m.safetensors")
    assert info == {"note": "x"}
    images = torch.rand(4, 1, 3, 64, 128)
    sats = torch.randn(4, 1, model.encoders.num_features)
    paths = torch.tensor([[0, 5], [3, 3], [0, 5], [7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(images, paths, sats), again(images, paths, sats), rtol=0, atol=0)
        torch.testing.assert_close(model.encode_street(images), again.encode_street(images), rtol=0, atol=0)


def test_cached_database_equals_live_encoding_and_search_is_exact(retrieval_run, tiny_city, tmp_path):
    assert main(["embed", str(tiny_city), "--model", str(retrieval_run), "--out", str(tmp_path), "--quiet"]) == 0
    (cache,) = tmp_path.glob("sat_*.h5")
    loc = Localizer.load(retrieval_run, tiny_city / "pyramid.h5", cache_dir=tmp_path, progress=False)
    assert cache.stat().st_mtime_ns == next(tmp_path.glob("sat_*.h5")).stat().st_mtime_ns  # read, not rebuilt
    model, grid = loc.model, loc.model.grid
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        crops = pyr.context(np.arange(grid.n_cells(grid.levels)))
    tf = model.encoders.transforms()
    with torch.no_grad():
        live = model.embed_sat(model.encoders.encode_sat(torch.stack([tf.sat(torch.from_numpy(c).permute(2, 0, 1)) for c in crops])))
    torch.testing.assert_close(loc.index.embeddings, live, rtol=0, atol=1e-5)
    assert loc.index.embedding_bytes == live.numel() * 4  # the database is all it keeps

    photos = sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[:6]
    results = loc.localize(photos, beam=1, topk=4)  # beam does not limit a search
    similarity = loc.embed_photos(photos) @ live.T
    for r, sims in zip(results, similarity):
        assert len(r.candidates) == 4
        assert [grid.cell_of_path(np.array(c.path)) for c in r.candidates] == sims.topk(4).indices.tolist()
        probs = [c.probability for c in r.candidates]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert r.probability == pytest.approx(np.prod([s.probability for s in r.path]), rel=1e-5)
        assert r.path[-1].cell == grid.cell_of_path(np.array(r.actions))
        assert (r.lon, r.lat) == pytest.approx(tuple(map(float, grid.centre_lonlat_of_path(np.array(r.actions)))))


def test_evaluate_writes_the_documented_metrics(retrieval_run, tiny_city, tmp_path):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(tiny_city), "--model", str(retrieval_run), "--out", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert m["model"] == "retrieval" and m["split"] == "test"
    assert set(m) == {
        "model", "split", "n_queries", "recall_at_1", "recall_at_1_ci95", "recall_at_1_ci95_resamples", "recall_at_5",
        "median_error_m", "mean_error_m", "latency_ms", "peak_rss_mb", "index_build_s", "pyramid", "references",
        "map_ablation",
    }  # fmt: skip
    assert set(m["map_ablation"]) == {"seed", "recall_at_1", "recall_at_1_ci95", "median_error_m"}  # no zoom steps to judge
    assert list(m["recall_at_1"]) == ["25", "40", "50", "100"] and list(m["recall_at_5"]) == ["50", "100"]
    for d in ("50", "100"):
        assert m["recall_at_5"][d] >= m["recall_at_1"][d]
    assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"] and m["index_build_s"] > 0
    assert (tmp_path / "errors.csv").is_file() and (tmp_path / "error_cdf.png").stat().st_size > 0


def test_localize_command_and_map(retrieval_run, tiny_city, tmp_path, capsys):
    photo = sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[0]
    args = ["localize", str(photo), "--model", str(retrieval_run), "--city", str(tiny_city), "--quiet"]
    assert main([*args, "--json", "--topk", "3", "--map", str(tmp_path / "map.html")]) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rec["candidates"]) == 3 and [s["level"] for s in rec["path"]] == [1, 2]
    assert photo.name in (tmp_path / "map.html").read_text()


# ---------------------------------------------------------------------- the other training path and configs
def test_training_satellite_encoder_on_neighbour_batches(tiny_city, tmp_path):
    """Context crops read by the loader and encoded live, batches of GPS neighbours."""
    (tmp_path / "sat.yaml").write_text(SAT_NEIGHBOUR_RUN)
    assert main(["train", str(tiny_city), "--config", str(tmp_path / "sat.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert changed_sat_weights(tmp_path / "run", tmp_path / "sat.yaml"), "the satellite encoder's last group must have trained"


def test_shipped_config_differs_from_the_zoom_config_in_the_method_only():
    zoom, retrieval = (load_run_config(REPO / "configs" / f"{name}.yaml") for name in ("zoom", "retrieval"))
    assert retrieval.model.kind == "retrieval"
    assert retrieval.model.encoder == zoom.model.encoder
    assert retrieval.train == zoom.train


@pytest.mark.parametrize(
    "model, train",
    [
        ("{kind: retrieval, policy: {width: 64}}", "{}"),
        ("{kind: retrieval, retrieval: {neighbour_batching: true, neighbour_group: 5}}", "{batch_size: 32}"),
    ],
)
def test_config_mistakes_are_one_line_errors(model, train, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(f"model: {model}\ntrain: {train}\n")
    assert main(["train", str(tmp_path), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(config) in err and "\n" not in err
    assert not (tmp_path / "o").exists()
