"""Throughput of the backfill against its floor and its reference, on the same events, in one run. A benchmark, not
a test:

    .venv/bin/python deploy/bench/throughput.py --events 1000000 [--json FILE] [--runners FnApiRunner,FlinkRunner]

1. `journeys generate` produces about --events records (customers = events / 10 over 60 days, 1 % malformed,
   Confluent Avro) to fresh topics of the local broker, --generate-part customers at a time (or --topic-prefix
   reuses topics produced before);
2. raw: a plain kafka-python consume + fastavro decode loop over those topics — the floor of reading them;
3. pipeline: `journeys backfill` end to end into a new DuckDB file (read, decode, journey tables, validation,
   landing, the checkpoint), once per runner of --runners: FnApiRunner (in the launcher's process), FlinkRunner (the
   cluster of `journeys flink up`, whose TaskManager and SDK workers' RSS is sampled: backfill_engines.py);
4. reference: the same topics consumed and decoded as the pipeline does, then the reference SQL of
   tests/reference.py (touchpoints, heuristic order attribution, channel_attribution_daily, customers, weekly and
   monthly retention) in DuckDB.

Each phase runs as its own process; its wall time and peak RSS (os.wait4) are reported, with events/s and the
ratios pipeline/raw and pipeline/reference per runner. Row counts of each runner's tables and the reference's are
printed side by side as a check that all computed the same thing. `pipeline` is the first runner's result,
`pipelines` every runner's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backfill_engines import JOURNEYS, NONZERO_DAY, run_backfill
from flink_restart import cluster
from report import report
from topics import messages

REPO = Path(__file__).resolve().parents[2]
EVENTS_PER_CUSTOMER = 10  # over 60 simulated days: 9.8-9.9 measured at 1,000 and 3,000 customers
COMPARED_TABLES = ("touchpoints", "channel_attribution_daily", "customers", "retention_cohorts")
REFERENCE_PART = 200_000  # records decoded before the reference adds them to its DuckDB


def phase_raw(prefix: str) -> dict:
    """The floor: Confluent framing stripped, fastavro schemaless decode; a record that fails is counted."""
    import fastavro

    import schemas

    readers = {prefix + t: schemas.latest(t).parsed for t in schemas.TOPICS}
    writers = {s.schema_id: s.parsed for s in schemas.registry().values()}
    decoded = failed = 0
    for message in messages(prefix):
        try:
            (schema_id,) = struct.unpack(">I", message.value[1:5])
            fastavro.schemaless_reader(io.BytesIO(message.value[5:]), writers[schema_id], readers[message.topic])
            decoded += 1
        except Exception:  # noqa: BLE001 - the malformed records: counted, as the pipeline dead-letters them
            failed += 1
    return {"records": decoded + failed, "decoded": decoded, "failed": failed}


def phase_reference(prefix: str, work: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from reference import CHANNEL_ATTRIBUTION_DAILY, add_events, event_tables, reference_views, retention_reference

    import schemas
    from transforms.decode_events import DeadLetter, EventDecoder
    from transforms.kafka_message import KafkaMessage

    decoder = EventDecoder.for_prefix(prefix)
    con = event_tables()
    con.execute(f"set temp_directory = '{work / 'reference.tmp'}'")  # its joins spill there rather than fail
    # the decoded records go into DuckDB a part at a time: the phase's memory is DuckDB's, not a list of all events
    part = {topic: [] for topic in schemas.TOPICS}
    records = dead = 0
    for m in messages(prefix):
        records += 1
        outcome = decoder(KafkaMessage(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                                       tuple(m.headers or ())))
        if isinstance(outcome, DeadLetter):
            dead += 1
        else:
            part[decoder.logical_topic(m.topic)].append(outcome)
        if records % REFERENCE_PART == 0:
            add_events(con, part)
            part = {topic: [] for topic in schemas.TOPICS}
    add_events(con, part)
    decoded_at = time.monotonic()
    reference_views(con)
    rows = {"touchpoints": con.execute("select count(*) from touchpoints").fetchone()[0],
            "channel_attribution_daily": con.execute(f"select count(*) from ({CHANNEL_ATTRIBUTION_DAILY}) "
                                                     f"where {NONZERO_DAY}").fetchone()[0],
            "customers": con.execute("select count(*) from customers").fetchone()[0],
            "retention_cohorts": len(retention_reference(con, "week")) + len(retention_reference(con, "month"))}
    return {"records": records, "dead_letters": dead, "sql_seconds": round(time.monotonic() - decoded_at, 2),
            "rows": rows}


def generate(prefix: str, customers: int, args, work: Path) -> dict:
    """`journeys generate` a part of --generate-part customers at a time (the generator holds and sorts a part's
    events in memory): each part's records are in event-time order, the topics hold the parts one after another."""
    parts = []
    for first in range(0, customers, args.generate_part):
        count = min(args.generate_part, customers - first)
        parts.append(_timed([*JOURNEYS, "generate", "--customers", str(count), "--first-customer", str(first),
                             "--days", str(args.days), "--seed", str(args.seed), "--topic-prefix", prefix,
                             "--malformed", str(args.malformed), "--manifest", str(work / f"manifest-{first}.json")],
                            work / f"generate-{first}.log"))
    return {"seconds": round(sum(p["seconds"] for p in parts), 2), "customers": customers, "parts": len(parts),
            "peak_rss_mib": max(p["peak_rss_mib"] for p in parts)}


def _save_partial(result: dict, json_path: str | None) -> None:
    """The phases measured so far, marked partial: a long run (ten million events) that is stopped keeps them."""
    if json_path:
        Path(json_path).write_text(json.dumps({**result, "partial": True}, indent=2))


def _timed(command: list[str], log: Path) -> dict:
    """Runs a phase; its wall time and the peak RSS of its process tree's largest member."""
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return {"seconds": round(time.monotonic() - started, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def _phase(name: str, prefix: str, work: Path) -> dict:
    result_file = work / f"{name}.json"
    timing = _timed([sys.executable, __file__, "--phase", name, "--topic-prefix", prefix, "--out", str(result_file)],
                    work / f"{name}.log")
    return {**json.loads(result_file.read_text()), **timing}


def compared_rows(all_rows: dict[str, int]) -> dict[str, int]:
    """The tables the reference computes too, from a backfill's row counts (backfill_engines.row_counts)."""
    rows = {t: all_rows[t] for t in (*COMPARED_TABLES, "dead_letters")}
    # a daily total that a correction or a full reversal took to nothing: counted as absent, as the tests do
    rows["channel_attribution_daily"] = all_rows["channel_attribution_daily (nonzero)"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="about this many records (default 1M)")
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--malformed", type=float, default=0.01)
    parser.add_argument("--runners", default="FnApiRunner",
                        help="comma-separated backfill runners, each timed on the same topics: FnApiRunner, "
                             "FlinkRunner (default: %(default)s)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="how often a Flink cluster's RSS is sampled")
    parser.add_argument("--topic-prefix", help="reuse topics generated before (skips generation)")
    parser.add_argument("--generate-part", type=int, default=100_000, metavar="CUSTOMERS",
                        help="customers generated per `journeys generate` (default: %(default)s, about 1M records)")
    parser.add_argument("--json", metavar="FILE", help="write the result here too")
    parser.add_argument("--phase", choices=("raw", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # one phase, in its own process
        started = time.monotonic()
        if args.phase == "raw":
            result = phase_raw(args.topic_prefix)
        else:
            result = phase_reference(args.topic_prefix, Path(args.out).parent)
        Path(args.out).write_text(json.dumps({**result, "work_seconds": round(time.monotonic() - started, 2)}))
        return

    runners = args.runners.split(",")
    if "FlinkRunner" in runners and not cluster().running():
        raise SystemExit("the Flink cluster is not running: journeys flink up (with the same JOURNEYS_FLINK_PORT)")
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    result = {"events_requested": args.events, "runners": runners, "work_dir": str(work)}
    prefix = args.topic_prefix
    if prefix is None:
        prefix = f"tput{int(time.time())}_"
        result["generate"] = generate(prefix, max(1, args.events // EVENTS_PER_CUSTOMER), args, work)
    result["topic_prefix"] = prefix
    print(f"topics {prefix}*; logs in {work}", file=sys.stderr)
    _save_partial(result, args.json)

    raw = result["raw"] = _phase("raw", prefix, work)
    _save_partial(result, args.json)
    records = raw["records"]
    pipelines = result["pipelines"] = {}
    for runner in runners:
        print(f"backfill on {runner} ...", file=sys.stderr)
        run = run_backfill(runner, prefix, work, [], args.sample_s)
        cluster_peak = run.get("cluster", {}).get("peak_mib", {}).get("taskmanager+workers")
        pipelines[runner] = {**{k: v for k, v in run.items() if k != "rows"},
                             # FnApiRunner: the launcher and its worker processes; Flink: its TaskManager and SDK
                             # workers
                             "peak_rss_mib": cluster_peak or max(run["launcher_peak_rss_mib"],
                                                                 run["launcher_tree"]["peak_mib"]),
                             "rows": compared_rows(run["rows"])}
        _save_partial(result, args.json)
    reference = result["reference"] = _phase("reference", prefix, work)
    for phase in (raw, *pipelines.values(), reference):
        phase["events_per_s"] = round(records / phase["seconds"], 1)
    for pipeline in pipelines.values():
        pipeline["ratio_to_raw"] = round(pipeline["events_per_s"] / raw["events_per_s"], 4)
        pipeline["ratio_to_reference"] = round(pipeline["events_per_s"] / reference["events_per_s"], 4)
        pipeline["records_accounted"] = pipeline["rows"]["dead_letters"] == reference["dead_letters"]
        pipeline["same_row_counts"] = {t: [pipeline["rows"][t], reference["rows"][t]] for t in COMPARED_TABLES}
    pipeline = result["pipeline"] = pipelines[runners[0]]
    result["ratio_pipeline_to_raw"] = pipeline["ratio_to_raw"]
    result["ratio_pipeline_to_reference"] = pipeline["ratio_to_reference"]
    result["records"] = records
    result["records_accounted"] = all(p["records_accounted"] for p in pipelines.values())
    result["same_row_counts"] = pipeline["same_row_counts"]
    report(result, args.json)


if __name__ == "__main__":
    main()
