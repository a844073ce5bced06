"""Does sub-cell refinement pay? The same zoom run with and without the offset head, on validation.

The refinement head (``policy.refine``) predicts where in the terminal cell the camera stands,
so the answer can move off the cell centre. It is kept in a config only if it lowers the
**validation median error**; this script measures that, from one run on one machine: two
trainings identical but for the head (same seed, steps, data order), both evaluated on the val
split, and the difference printed.

Without ``--city`` it builds ``configs/bench_quick.yaml``'s city (300 m, 400 photos, split into
10 m blocks) — validation photos with training neighbours, where the policy learns within a
couple of minutes and reaches the right terminal cell often enough for an offset to matter.

    python benchmarks/refinement.py [--city CITY_DIR] [--config configs/quick/zoom.yaml] [--steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from zoomloc.core.config import load_yaml
from zoomloc.evaluation.evaluate import evaluate_run
from zoomloc.geo.citydir import CityDir
from zoomloc.pipelines.benchmark import BenchmarkConfig
from zoomloc.pipelines.stages import Stages
from zoomloc.training.trainer import load_run_config, train

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "bench_quick.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--city", type=Path, default=None, help="a split city with its pyramid (default: generate the quick city)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quick" / "zoom.yaml", help="the zoom run to compare")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        city = CityDir(args.city or tmp / "city")
        if args.city is None:
            quick = load_yaml(BenchmarkConfig, QUICK)
            Stages().city(city, QUICK.parent / quick.city, quick.split, quick.pyramid, progress=False)
        base = load_run_config(args.config)
        rows = {}
        for refine in (False, True):
            cfg = dataclasses.replace(
                base,
                model=dataclasses.replace(base.model, policy=dataclasses.replace(base.model.policy, refine=refine)),
                train=dataclasses.replace(base.train, steps=args.steps, val_every=args.steps),
            )
            run = tmp / f"refine_{refine}"
            train(city.root, cfg, run, progress=False)
            report = evaluate_run(city.root, run, split="val", out=run / "val" / "metrics.json", progress=False)
            rows[refine] = json.loads(report.metrics_path.read_text())
    print(f"{args.config.name}, {args.steps} steps, val split ({rows[False]['n_queries']} photos), greedy decoding")
    print(f"{'':14}{'median m':>10}{'mean m':>10}{'R@1 25 m':>10}{'R@1 50 m':>10}")
    for refine, m in rows.items():
        r1 = m["recall_at_1"]
        print(
            f"{'refine ' + ('on' if refine else 'off'):14}{m['median_error_m']:10.1f}{m['mean_error_m']:10.1f}"
            f"{r1['25']:9.1f}%{r1['50']:9.1f}%"
        )
    gain = rows[False]["median_error_m"] - rows[True]["median_error_m"]
    print(
        f"refinement lowers the val median error by {gain:.1f} m ({gain / rows[False]['median_error_m'] * 100:+.1f}% of it)"
        if gain > 0
        else f"refinement does not help: val median error {-gain:.1f} m higher"
    )


if __name__ == "__main__":
    main()
