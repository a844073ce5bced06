"""The pipeline commands: the benchmark and the demo, each building a city from its config and running it all."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomloc.cli.options import setup


def _benchmark(args: argparse.Namespace) -> None:
    from zoomloc.pipelines.benchmark import run_benchmark

    print(run_benchmark(args.config, args.out, args.city, progress=not args.quiet).describe())


def benchmark_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _benchmark, "zoomloc benchmark --config configs/bench.yaml --out benchmarks/results/bench")
    p.add_argument("--config", type=Path, required=True, help="benchmark config (configs/bench.yaml; configs/bench_quick.yaml: minutes)")
    p.add_argument(
        "--city",
        type=Path,
        default=None,
        metavar="CITY_DIR",
        help="an existing city directory (default: generate the config's synthetic city under OUT/city)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: OUT/<protocol>/ (city folder, runs), results.json, report.md, error_cdf.png"
    )


def _demo(args: argparse.Namespace) -> None:
    from zoomloc.pipelines.demo import run_demo

    for line in run_demo(args.out, args.config, progress=not args.quiet):
        print(line)


def demo_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _demo, "zoomloc demo --out out/demo")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default %(default)s)")
    p.add_argument("--config", type=Path, default=None, help="demo config (default: the repository's configs/demo.yaml)")


ARGUMENTS = {"benchmark": benchmark_arguments, "demo": demo_arguments}
