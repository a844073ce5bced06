"""Training the zoom model on a tiny synthetic city, and what a trained run must guarantee."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
import torch
from conftest import changed_sat_weights, untimed_records, write_run_config  # tests/ is on sys.path under pytest

from data_prep.split import SplitConfig, split_city
from zoomloc.cli.main import main
from zoomloc.core.errors import ConfigError
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.localize import Localizer
from zoomloc.inference.photo_witness import with_training_photos
from zoomloc.models.checkpoint import load_model, save_checkpoint
from zoomloc.models.registry import build_model
from zoomloc.training.trainer import load_run_config


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_loss_and_beats_chance(trained_run):
    records = _records(trained_run)
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:2]), losses
    val = [r for r in records if "val_step_accuracy" in r]
    assert [r["step"] for r in val] == [150, 300]
    chance = 100 / 16
    # Free-running (greedy) accuracy of the first zoom decision on held-out photos.
    assert val[-1]["val_step_accuracy"][0] > 2 * chance, val[-1]
    for name in ("config.yaml", "best.safetensors", "last.safetensors", "train_state.pt", "curve.png"):
        assert (trained_run / name).is_file(), name


def test_best_checkpoint_is_the_best_validation(trained_run):
    _, info = load_model(trained_run)
    val = [r for r in _records(trained_run) if "val_recall_at_1" in r]
    assert info["val"]["recall_at_1"]["50"] == max(r["val_recall_at_1"]["50"] for r in val)


def test_checkpoint_reloads_to_identical_outputs(tiny_city, tmp_path):
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid, views = pyr.grid, torch.from_numpy(pyr.views(1, np.arange(4))).permute(0, 3, 1, 2)
    cfg = load_run_config(write_run_config(tmp_path)).model
    model = build_model(cfg, grid).eval()
    save_checkpoint(tmp_path / "m.safetensors", model, {"note": "x"})
    again, info = load_model(tmp_path / "m.safetensors")
    assert info == {"note": "x"}
    images = torch.rand(4, 1, 3, 64, 128)
    tf = model.encoders.transforms()
    sats = torch.stack([tf.sat(v) for v in views])[None].expand(4, -1, -1, -1, -1)[:, :2]
    paths = torch.tensor([[0, 5], [3, 3], [15, 0], [7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(images, paths, sats)[0], again(images, paths, sats)[0], rtol=0, atol=0)


def test_every_checkpoint_loads_whatever_its_header_length(tiny_city, tmp_path):
    """A safetensors file starts with its header's length: one in 256 starts with byte 0x80, a
    pickle's first byte, and such a checkpoint was once refused as a pickle."""
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid = pyr.grid
    model = build_model(load_run_config(write_run_config(tmp_path)).model, grid).eval()
    path = tmp_path / "m.safetensors"
    for note in range(0, 256, 8):  # headers are padded to 8 bytes: 32 lengths cover every first byte
        save_checkpoint(path, model, {"note": "x" * note})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_model(path)[1] == {"note": "x" * note}


def test_cached_embeddings_give_the_same_answers_as_live_encoding(trained_run, tiny_city):
    loc = Localizer.load(trained_run, tiny_city / "pyramid.h5", progress=False)
    photos = sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[:12]
    cached = loc.localize(photos, beam=3, topk=3)
    cache_files = list((tiny_city / "embeddings").glob("sat_*.h5"))
    assert cache_files, "the embeddings are cached beside the pyramid"

    pyr = PyramidReader(tiny_city / "pyramid.h5")
    tf = loc.model.encoders.transforms()

    def live(paths: torch.Tensor) -> torch.Tensor:  # encode each view from the pyramid, now
        level = paths.shape[1]
        cells = pyr.grid.cell_of_path(paths.numpy())
        views = pyr.context(cells) if level == pyr.grid.levels else pyr.views(level, cells)
        x = torch.stack([tf.sat(torch.from_numpy(v).permute(2, 0, 1)) for v in views])
        with torch.no_grad():
            return loc.model.encoders.encode_sat(x)

    loc.index.sat.of_paths = live  # the decoder asks for views through this one function
    fresh = loc.localize(photos, beam=3, topk=3)
    for a, b in zip(cached, fresh):
        assert a.actions == b.actions
        assert [c.path for c in a.candidates] == [c.path for c in b.candidates]
        np.testing.assert_allclose([c.probability for c in a.candidates], [c.probability for c in b.candidates], rtol=1e-4)


def test_localizer_holds_only_the_tables_its_model_reads(trained_run, tiny_city, tmp_path):
    """The cache stores every table (any model may use it); a zoom model keeps the levels only, and
    its index build time is the cache's, not a rebuild's."""
    loc = Localizer.load(trained_run, tiny_city / "pyramid.h5", cache_dir=tmp_path, progress=False)
    (cache,) = tmp_path.glob("sat_*.h5")
    with h5py.File(cache) as f:
        stored = sorted(f)
        build_s = f.attrs["build_s"]
    assert stored == ["level_0", "level_1", "terminal"]
    assert all(t is not None for t in loc.index.sat.levels) and loc.index.sat.terminal is None
    assert loc.index_build_s >= build_s > 0
    again = Localizer.load(trained_run, tiny_city / "pyramid.h5", cache_dir=tmp_path, progress=False)
    assert again.index.sat.terminal is None and again.index_build_s == pytest.approx(loc.index_build_s, abs=0.5)
    with pytest.raises(ValueError, match="length 2 were not loaded"):
        again.index.sat.of_paths(torch.zeros(1, 2, dtype=torch.int64))


def test_localizer_results_are_consistent(trained_run, tiny_city):
    loc = Localizer.load(trained_run, tiny_city / "pyramid.h5", progress=False)
    photo = sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[0]
    greedy = loc.localize([photo], beam=1, topk=1)[0]
    beam = loc.localize([photo], beam=4, topk=4)[0]
    assert len(beam.candidates) == 4
    probs = [c.probability for c in beam.candidates]
    assert probs == sorted(probs, reverse=True)
    assert beam.probability >= greedy.probability - 1e-6  # a wider beam never finds a worse best path
    step_product = np.prod([s.probability for s in greedy.path])
    assert greedy.probability == pytest.approx(step_product, rel=1e-5)
    grid = loc.model.grid
    assert greedy.path[-1].cell == grid.cell_of_path(np.array(greedy.actions))
    assert greedy.cell_polygons(grid)[-1].contains(shapely.Point(greedy.lon, greedy.lat))


def test_two_process_ddp_trains(tiny_city, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "zoomloc", "train", str(tiny_city), "--config", str(write_run_config(tmp_path, steps=6, val_every=6, workers=0)),
           "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [r["step"] for r in _records(out) if "loss" in r]
    assert steps == [6]
    assert (out / "last.safetensors").is_file()


def test_train_refuses_to_overwrite_a_run(trained_run, tiny_city, tmp_path, capsys):
    code = main(["train", str(tiny_city), "--config", str(write_run_config(tmp_path)), "--out", str(trained_run), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert str(trained_run) in err and "--resume" in err and "\n" not in err


def test_another_split_of_the_same_photos_refuses_resume_and_warns_evaluation(trained_run, tiny_city, tmp_path, capsys):
    """After the city is split anew, test photos may be ones the model trained on."""
    city = tmp_path / "city"
    city.mkdir()
    for name in ("satellite", "streetview", "pyramid.h5"):
        (city / name).symlink_to(tiny_city / name)
    split_city(city, SplitConfig(block_m=8.0, buffer_m=0.0, fractions=(0.75, 0.15, 0.10), seed=1))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["train", str(city), "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(run) in err and "another split" in err and "\n" not in err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) == json.loads(
        (trained_run / "metrics.jsonl").read_text().splitlines()[-1]
    )
    for where, warned in ((city, True), (tiny_city, False)):
        assert main(["evaluate", str(where), "--model", str(run), "--out", str(tmp_path / "m.json"), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert ("warning: the model was trained on another split of these photos" in out) is warned, out


def test_run_config_keys_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 3}\n")
    assert main(["train", str(tmp_path), "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_resume_continues_exactly_where_an_interrupted_run_stopped(tiny_city, tmp_path, monkeypatch):
    """An interruption after a checkpoint, then --resume: same final weights and metrics as one run."""
    from safetensors.torch import load_file

    from zoomloc.training import trainer as train_module

    config = write_run_config(tmp_path, steps=20, val_every=10)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(tiny_city), "--config", str(config), "--out", str(straight), "--quiet"]) == 0

    original = train_module._Trainer._train_step

    def interrupted(self, batch):
        if self.step == 14:  # after the step-10 checkpoint, before the next one
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(train_module._Trainer, "_train_step", interrupted)
    assert main(["train", str(tiny_city), "--config", str(config), "--out", str(resumed), "--quiet"]) == 130
    monkeypatch.setattr(train_module._Trainer, "_train_step", original)
    assert main(["train", str(tiny_city), "--out", str(resumed), "--resume", "--quiet"]) == 0

    a, b = load_file(straight / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    assert untimed_records(resumed) == untimed_records(straight)


def test_training_satellite_encoder_and_refinement_head(tiny_city, tmp_path):
    """The other training path: satellite views read by the loader and encoded live; offsets learned."""
    config = tmp_path / "sat.yaml"
    config.write_text(
        "model:\n"
        "  encoder: {street_size: [32, 64], sat_size: 32, freeze: all, sat_freeze: all_but_last_1}\n"
        "  policy: {width: 32, layers: 1, heads: 2, refine: true}\n"
        "train: {steps: 6, batch_size: 8, val_every: 6, val_queries: 16, log_every: 3, workers: 2}\n"
    )
    out = tmp_path / "run"
    assert main(["train", str(tiny_city), "--config", str(config), "--out", str(out), "--quiet"]) == 0
    model, _ = load_model(out)
    assert model.policy.offset_head is not None
    assert changed_sat_weights(out, config), "the satellite encoder's last group must have trained"
    # Refined answers move away from the terminal cells' centres.
    loc = Localizer.load(out, tiny_city / "pyramid.h5", cache_dir=tmp_path / "emb", progress=False)
    r = loc.localize(sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[:1], beam=1, topk=1)[0]
    cx, cy = model.grid.centre_lonlat_of_path(np.array(r.actions))
    assert (r.lon, r.lat) != (float(cx), float(cy))


def test_a_zoom_with_a_cell_head_learns_a_place_embedding_beside_the_same_policy(tiny_city, tmp_path):
    """The cell head trains against the terminal cells' crops and gives the zoom a place embedding of its own;
    the policy starts from the weights it would have without the head, and rollouts are refused with it."""
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid = pyr.grid
    plain = load_run_config(write_run_config(tmp_path)).model
    matched = dataclasses.replace(plain, policy=dataclasses.replace(plain.policy, match_dim=16))
    torch.manual_seed(0)
    without = build_model(plain, grid).policy.state_dict()
    torch.manual_seed(0)
    model = build_model(matched, grid)
    assert all(torch.equal(v, without[k]) for k, v in model.policy.state_dict().items())
    assert model.sat_prefixes == tuple(range(grid.levels + 1)) and "street_head.weight" in model.state_dict()

    config = tmp_path / "match.yaml"
    config.write_text(
        "model:\n"
        "  encoder: {street_size: [32, 64], sat_size: 32, freeze: all}\n"
        "  policy: {width: 32, layers: 1, heads: 2, match_dim: 16}\n"
        "train: {steps: 20, batch_size: 16, val_every: 20, val_queries: 16, log_every: 10, workers: 0}\n"
    )
    out = tmp_path / "run"
    assert main(["train", str(tiny_city), "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert all("match_acc" in r for r in _records(out) if "loss" in r)
    trained, _ = load_model(out)
    street = torch.randn(5, trained.encoders.num_features)
    place = trained.place_embedding(street)
    assert place.shape == (5, 16) and torch.allclose(place.norm(dim=-1), torch.ones(5))
    run_cfg = load_run_config(config)
    torch.manual_seed(run_cfg.train.seed)  # as training seeds before it builds its model
    assert not torch.equal(trained.street_head.weight, build_model(run_cfg.model, grid).street_head.weight)
    loc = Localizer.load(out, tiny_city / "pyramid.h5", progress=False)
    assert loc.index.sat.terminal is None, "the head's crops train it; a query process does not load them"
    witnessed, _ = with_training_photos(loc, out, CityDir(tiny_city), workers=0)
    assert witnessed.index.photos.embeddings.shape[1] == 16, "the witness compares photos by the cell head"
    with pytest.raises(ValueError, match="no cell head"):
        dataclasses.replace(run_cfg, train=dataclasses.replace(run_cfg.train, rollout=0.5))


def test_sizes_the_zoom_model_derives_are_refused_when_a_config_disagrees(tiny_city, tmp_path):
    """k, levels and embed_dim follow the pyramid and the encoder: a config that sets them otherwise
    is refused in one line rather than silently overridden; one that agrees is taken."""
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid = pyr.grid
    cfg = load_run_config(write_run_config(tmp_path)).model
    with pytest.raises(ConfigError, match=rf"policy.k is 9 but the pyramid's grid makes it {grid.k}"):
        build_model(dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, k=9)), grid)
    with pytest.raises(ConfigError, match="policy.embed_dim is 7 but the encoder's feature size"):
        build_model(dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, embed_dim=7)), grid)
    model = build_model(dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, levels=grid.levels)), grid)
    assert (model.settings.k, model.settings.levels, model.settings.embed_dim) == (grid.k, grid.levels, model.encoders.num_features)
