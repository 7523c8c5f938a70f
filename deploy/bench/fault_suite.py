"""The fault suite on Flink at scale: the same test CI runs small, at --customers (default 14,500: about 100,000
events). A benchmark script, not a test:

    .venv/bin/python deploy/bench/fault_suite.py [--customers 14500] [--json FILE]

Runs tests/test_flink.py's fault test (poison records of every bad-input class and 2 % malformed records among
the events; the TaskManager SIGKILLed three times mid-stream, the broker restarted once, the launching process killed
once; the tables must end equal to an uninterrupted run computed in memory, every record counted once, the dead
letters exactly the malformed and poison records) against the running broker and Flink cluster (`journeys kafka up`,
`journeys flink up`, with the same JOURNEYS_KAFKA_PORT / JOURNEYS_FLINK_PORT), and reports whether it passed, how
long it took, how many records it produced and how many times Flink restored the job from a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST = "tests/test_flink.py::test_poison_taskmanager_killed_three_times_a_broker_restart_and_the_launcher_killed_end_as_an_uninterrupted_run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=14_500,
                        help="about seven events each over the 30 days (default %(default)s: about 100,000 events)")
    parser.add_argument("--json", metavar="FILE", help="write the result here too")
    args = parser.parse_args()
    report = Path(tempfile.mkdtemp(prefix="fault-suite-")) / "junit.xml"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                           TEST], cwd=REPO, env={**os.environ, "JOURNEYS_FLINK_FAULT_CUSTOMERS": str(args.customers),
                                            "JOURNEYS_FLINK_FAULT_BROKER_RESTART": "1"})
    seconds = round(time.monotonic() - started, 1)
    case = ElementTree.parse(report).getroot().find(".//testcase")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    failure = case.find("failure")
    result = {"machine": f"{platform.machine()} cpus={os.cpu_count()} python={platform.python_version()}",
              "customers": args.customers, "records": int(properties.get("records", 0)),
              "restores_from_checkpoints": int(properties.get("restores_from_checkpoints", 0)),
              "passed": done.returncode == 0, "seconds": seconds,
              "failure": failure.get("message", "")[:2000] if failure is not None else None}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
