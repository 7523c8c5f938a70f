"""Time of the exact Markov removal effects on a file of aggregated paths, at orders 1-3, against a plain numpy
absorbing-chain solve and, where it is installed, ChannelAttribution itself, on the same file in the same run.

    python deploy/bench/markov_solve.py [--paths 10000] [--channels 12] [--json FILE]
        [--channel-attribution PYTHON]   # a Python with PyPI's ChannelAttribution (a benchmark only, not a dependency)

Ours: `markov_removal_effects` (transforms/attribution.py) on the file's PathSummary, removal effects on conversions
and on value. numpy: the textbook solve, one dense (I - Q) x = r per removed channel, conversions only.
ChannelAttribution: `markov_model(..., var_value=..., var_null=..., order=k)`, which simulates.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import report

CHANNEL_ATTRIBUTION = """
import json, sys, time
import pandas as pd
from ChannelAttribution import markov_model
data = pd.read_csv(sys.argv[1], sep=";")
for order in (1, 2, 3):
    started = time.perf_counter()
    fitted = markov_model(data, "path", "total_conversions", var_value="total_conversion_value",
                          var_null="total_null", order=order, out_more=True, verbose=0, flg_pro=False)
    seconds = time.perf_counter() - started
    effects = fitted["removal_effects"]
    print(json.dumps({"order": order, "seconds": seconds, "effects": dict(zip(
        effects["channel_name"], zip(effects["removal_effects_conversion"],
                                     effects["removal_effects_conversion_value"])))}))
"""


def path_file(paths: int, channels: int, seed: int) -> str:
    rng = random.Random(seed)
    names = [f"channel_{i:02d}" for i in range(channels)]
    weights = [1 / (i + 1) for i in range(channels)]  # some channels far more common than others
    lines, seen = ["path;total_conversions;total_conversion_value;total_null"], set()
    while len(lines) <= paths:
        path = " > ".join(rng.choices(names, weights, k=rng.randint(1, 8)))
        if path in seen:
            continue
        seen.add(path)
        conversions = rng.choice([0, 0, 1, 1, 2, 5])
        lines.append(f"{path};{conversions};{conversions * rng.uniform(10, 400):.2f};{rng.randint(0, 40)}")
    return "\n".join(lines) + "\n"


def numpy_solve(paths, order: int) -> dict:
    """The plain absorbing-chain solve: states and counts in dicts, one dense solve per removed channel."""
    import numpy as np

    counts: dict = {}
    for path in (p for p in paths if p.conversions + p.nulls):
        states = ["(start)"] + [tuple(path.channels[max(0, i - order + 1): i + 1])
                                for i in range(len(path.channels))]
        for here, there in zip(states, states[1:]):
            counts.setdefault(here, {}).setdefault(there, 0.0)
            counts[here][there] += path.conversions + path.nulls
        ends = counts.setdefault(states[-1], {})
        ends["conv"] = ends.get("conv", 0.0) + path.conversions
        ends["null"] = ends.get("null", 0.0) + path.nulls

    def probability(removed):
        transient = [s for s in counts if s == "(start)" or removed not in s]
        index = {s: i for i, s in enumerate(transient)}
        q, r = np.zeros((len(transient), len(transient))), np.zeros(len(transient))
        for state in transient:
            total = sum(counts[state].values())
            for target, n in counts[state].items():
                if target == "conv":
                    r[index[state]] = n / total
                elif target in index:
                    q[index[state], index[target]] = n / total
        return np.linalg.solve(np.eye(len(transient)) - q, r)[index["(start)"]]

    base = probability(None)
    return {c: 1 - probability(c) / base for c in sorted({c for p in paths for c in p.channels})}


def main() -> int:
    from transforms.attribution import markov_removal_effects
    from transforms.path_files import read_paths, summary_of

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--channel-attribution", metavar="PYTHON",
                        help="a Python interpreter with ChannelAttribution installed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch) / "paths.csv"
        file.write_text(path_file(args.paths, args.channels, args.seed))
        paths = read_paths(file.read_text())
        result, effects = {"paths": len(paths), "channels": args.channels, "orders": {}}, {}
        for order in (1, 2, 3):
            summary = summary_of(paths, order)
            started = time.perf_counter()
            ours = markov_removal_effects(summary)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            plain = numpy_solve(paths, order)
            numpy_seconds = time.perf_counter() - started
            differs = max(abs(ours.removal_effects[c] - plain[c]) for c in plain)
            effects[order] = ours
            result["orders"][order] = {"states": len(summary.transitions), "ours_s": round(seconds, 3),
                                       "numpy_s": round(numpy_seconds, 3),
                                       "ours_over_numpy": round(seconds / numpy_seconds, 3),
                                       "largest_difference": differs}
        if args.channel_attribution:
            done = subprocess.run([args.channel_attribution, "-c", CHANNEL_ATTRIBUTION, str(file)],
                                  capture_output=True, text=True, check=True)
            for line in done.stdout.splitlines():
                if not line.startswith("{"):
                    continue  # its own advertising
                theirs = json.loads(line)
                ours, row = effects[theirs["order"]], result["orders"][theirs["order"]]
                row["channel_attribution_s"] = round(theirs["seconds"], 3)
                row["ours_over_channel_attribution"] = round(row["ours_s"] / theirs["seconds"], 3)
                # it simulates: its removal effects differ from the exact ones by its sampling error
                row["channel_attribution_largest_difference"] = {
                    "conversion": max(abs(ours.removal_effects[c] - e[0]) for c, e in theirs["effects"].items()),
                    "value": max(abs(ours.value_removal_effects[c] - e[1]) for c, e in theirs["effects"].items())}
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
