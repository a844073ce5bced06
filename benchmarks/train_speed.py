"""Training throughput: photos per second of optimizer steps, live street encoder vs the trunk caches.

The baseline is ``configs/zoom.yaml`` as it trained before the cache (commit 559b57f: no
``cache_views``, ``freeze: all_but_last_2``, batch 32, float32): every step decodes, augments and encodes
its photos, and back-propagates through the street encoder's last two stages. The cached runs
are ``configs/zoom.yaml`` with its encoders cut as each row of :data:`CACHED` says: both tails
training on cached trunk outputs (the street cache and the satellite trunk cache, GeM pooling),
the street tail alone, NetVLAD on both encoders' frozen stride-32 maps (``configs/zoom_vlad.yaml``'s
cut: the aggregators train, the backbones are cached), nothing but the policy and its cell head
(``freeze: all``, the config's ``match_dim``), and the policy without the cell head. The one-off cache builds are
timed apart; all code paths share today's encoders (channels-last convolutions).
Everything is measured in one run, on one machine: run it on an idle one (several
torch processes on 2 cores slow each other down far more than twice).

Each configuration trains ``2 × --window`` steps; the figure is the second window's
``img_per_s`` from ``metrics.jsonl`` (the first holds the warm-up), validation excluded.

    python benchmarks/train_speed.py [--city out/demo/city] [--window 20] [--out benchmarks/results/train_speed.json]

(``make demo`` builds ``out/demo/city``; any split city with its pyramid will do.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from zoomloc.core.atomic import write_text
from zoomloc.data.sat_cache import SatCacheSpec, sat_trunk_cache
from zoomloc.data.street_cache import StreetCacheSpec, street_cache
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.registry import build_model
from zoomloc.pipelines.benchmark import machine
from zoomloc.training.trainer import RunConfig, load_run_config, train

REPO = Path(__file__).resolve().parents[1]
BASELINE = ({"freeze": "all_but_last_2", "sat_freeze": "all", "pool": "avg"}, {"batch_size": 32, "cache_views": 0, "cpu_bf16": False})
FROZEN = {"freeze": "all", "sat_freeze": "all", "pool": "avg"}
CACHED = {  # row: the encoders' cut and the policy's settings changed (train settings as configured)
    "both tails (all_but_last_1, GeM)": ({"freeze": "all_but_last_1", "sat_freeze": "all_but_last_1", "pool": "gem"}, {}),
    "street tail (all_but_last_1)": ({"freeze": "all_but_last_1", "sat_freeze": "all", "pool": "avg"}, {}),
    "NetVLAD on both (keep_blocks 6, all)": ({"freeze": "all", "sat_freeze": "all", "pool": "netvlad", "keep_blocks": 6}, {}),
    "policy and cell head (all)": (FROZEN, {}),
    "policy alone (all, match_dim 0)": (FROZEN, {"match_dim": 0}),
}


def throughput(city: CityDir, cfg: RunConfig, window: int, out: Path) -> float:
    """Photos/s of the second ``window`` of optimizer steps of ``cfg`` on ``city``."""
    tc = dataclasses.replace(cfg.train, steps=2 * window, log_every=window, val_every=2 * window, val_queries=32, warmup_steps=1)
    train(city.root, dataclasses.replace(cfg, train=tc), out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["img_per_s"] for r in records if "img_per_s" in r][1]


def variant(
    cfg: RunConfig, encoder: dict[str, Any], train: dict[str, int | bool] | None = None, policy: dict[str, int] | None = None
) -> RunConfig:
    """``cfg`` with ``encoder``, ``train`` and ``policy`` settings changed."""
    m = cfg.model
    model = dataclasses.replace(
        m, encoder=dataclasses.replace(m.encoder, **encoder), policy=dataclasses.replace(m.policy, **(policy or {}))
    )
    return dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, **(train or {})))


def cache_build_s(city: CityDir, cfg: RunConfig) -> dict[str, float | int]:
    """Seconds to build ``cfg``'s street cache and satellite trunk cache from scratch, and their item counts."""
    with PyramidReader(city.pyramid_path) as pyr:
        model = build_model(cfg.model, pyr.grid)
        tc = cfg.train
        street_spec = StreetCacheSpec.of(model.encoders, city, tc.augment, tc.cache_views, tc.seed)
        sat_spec = SatCacheSpec.of(model.encoders, pyr, tc.sat_augment, tc.cache_views, tc.seed)
        (city.embeddings_dir / f"street_{street_spec.key}.h5").unlink(missing_ok=True)
        (pyr.path.parent / "embeddings" / f"sattrunk_{sat_spec.key}.h5").unlink(missing_ok=True)
        start = time.perf_counter()
        street = street_cache(model.encoders, city, tc.augment, tc.cache_views, tc.seed, workers=tc.workers, progress=False)
        street_s, middle = time.perf_counter() - start, time.perf_counter()
        sat = sat_trunk_cache(model.encoders, pyr, tc.sat_augment, tc.cache_views, tc.seed, workers=tc.workers, progress=False)
        built = {"street_s": street_s, "photos": len(street), "sat_s": time.perf_counter() - middle, "views": len(sat)}
        street.close()
        sat.close()
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--city", type=Path, default=REPO / "out" / "demo" / "city", help="a split city with its pyramid")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "zoom.yaml", help="the zoom run config")
    parser.add_argument("--window", type=int, default=20, help="steps timed per configuration (after as many warm-up steps)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_speed.json")
    args = parser.parse_args()
    city = CityDir(args.city)
    cfg = load_run_config(args.config)
    base = variant(cfg, *BASELINE)
    results: dict[str, Any] = {"city": str(city.root), "window_steps": args.window}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["cache_build"] = cache_build_s(city, variant(cfg, CACHED["both tails (all_but_last_1, GeM)"][0]))
        baseline = throughput(city, base, max(2, args.window // 4), tmp / "baseline")  # ~1 s a step: fewer of them
        results["baseline_photos_per_s"] = baseline
        results["baseline"] = {"config": f"{args.config} with {BASELINE}"}
        results["cached"] = {}
        for i, (name, (encoder, policy)) in enumerate(CACHED.items()):
            cached = variant(cfg, encoder, policy=policy)
            rate = throughput(city, cached, args.window, tmp / str(i))
            results["cached"][name] = {
                "encoder": encoder,
                "policy": policy,
                "photos_per_s": rate,
                "speedup": rate / baseline,
                "batch_size": cached.train.batch_size,
                "cache_views": cached.train.cache_views,
            }
    results["machine"] = machine()
    write_text(args.out, json.dumps(results, indent=2) + "\n")
    live, batch = BASELINE[0]["freeze"], BASELINE[1]["batch_size"]
    print(f"baseline ({args.config.name} before the cache, live, {live}, batch {batch}): {baseline:.1f} photos/s")
    for name, r in results["cached"].items():
        print(f"cached, {name}, batch {r['batch_size']}: {r['photos_per_s']:.1f} photos/s ({r['speedup']:.1f}x)")
    b = results["cache_build"]
    print(f"cache builds, once: street {b['street_s']:.1f} s for {b['photos']} photos, satellite {b['sat_s']:.1f} s for {b['views']} views")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
