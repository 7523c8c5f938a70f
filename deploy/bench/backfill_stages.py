"""Where a backfill's time goes: `journeys backfill` run in this process, then FnApiRunner's execution time per
PTransform (its start, process and finish msecs, from the run's monitoring infos), largest first. A benchmark, not
a test:

    .venv/bin/python deploy/bench/backfill_stages.py --topic-prefix P --warehouse W [--top 30] [backfill options]

Time spent in the runner itself (grouping, moving bundles between stages) is in no PTransform: wall time minus the
total is that share. For a profile of the whole process, run the same under py-spy:
`py-spy record -f raw -o FILE -- .venv/bin/python -m pipelines.cli backfill ...`.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time

from apache_beam.metrics import monitoring_infos
from apache_beam.pipeline import Pipeline

BUNDLE_MSECS = (monitoring_infos.START_BUNDLE_MSECS_URN, monitoring_infos.PROCESS_BUNDLE_MSECS_URN,
                monitoring_infos.FINISH_BUNDLE_MSECS_URN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=30, help="how many PTransforms to list (default %(default)s)")
    args, backfill_args = parser.parse_known_args()
    results = []
    run = Pipeline.run

    def keeping_the_result(pipeline, *more, **options):
        result = run(pipeline, *more, **options)
        results.append(result)
        return result

    Pipeline.run = keeping_the_result
    from pipelines import backfill

    started = time.monotonic()
    code = backfill.main(backfill_args)
    wall_s = time.monotonic() - started
    msecs = collections.Counter()
    for info in results[0].monitoring_infos():
        if info.urn in BUNDLE_MSECS:
            msecs[info.labels.get("PTRANSFORM", "?")] += monitoring_infos.extract_counter_value(info)
    total = sum(msecs.values())
    print(f"backfill {wall_s:.1f} s wall; {total / 1000:.1f} s in PTransforms", file=sys.stderr)
    for name, spent in msecs.most_common(args.top):
        print(f"{spent / 1000:8.1f} s {100 * spent / total:5.1f} %  {name}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
