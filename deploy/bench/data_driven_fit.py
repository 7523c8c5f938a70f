"""CPU time of one window's data-driven fit (customer_journeys._fitted: Markov, Shapley, credits, bootstrap
intervals) on a summary of N synthetic paths over 12 channels. A benchmark, not a test: it says whether a slow
data-driven stage is the fit or the per-path work before it.

    python deploy/bench/data_driven_fit.py --paths 20000,200000
"""
from __future__ import annotations

import argparse
import datetime as dt
import random
import time

from transforms.attribution import AttributionConfig, PathSummary, markov_removal_effects, shapley_values
from transforms.customer_journeys import _fitted

CHANNELS = [f"channel_{i}" for i in range(12)]


def synthetic_summary(paths: int, seed: int = 1) -> PathSummary:
    rng = random.Random(seed)
    summary = PathSummary(1)
    for identity in range(paths):
        length = min(12, int(rng.expovariate(1 / 2.5)) + 1)
        channels = [rng.choice(CHANNELS[:6] if rng.random() < 0.7 else CHANNELS) for _ in range(length)]
        converted = rng.random() < 0.1
        summary.add(channels, converted, rng.uniform(10, 300) if converted else 0.0, 1, identity)
    return summary


def cpu_seconds(step) -> float:
    started = time.process_time()
    step()
    return round(time.process_time() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="20000,200000", help="comma-separated path counts")
    args = parser.parse_args()
    start, week = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), dt.timedelta(days=7)
    for paths in map(int, args.paths.split(",")):
        summary = synthetic_summary(paths)
        kept = "none (over the cap)" if summary.distinct is None else len(summary.distinct)
        fit = cpu_seconds(lambda: list(_fitted(start, week, summary, AttributionConfig())))
        print(f"{paths:,} paths: distinct paths kept {kept}; "
              f"markov {cpu_seconds(lambda: markov_removal_effects(summary))} s, "
              f"shapley {cpu_seconds(lambda: shapley_values(summary, 12, 2000, 0))} s, "
              f"the whole fit with intervals {fit} s of CPU")


if __name__ == "__main__":
    main()
