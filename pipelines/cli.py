"""`journeys`: the command line of customer-journeys. `journeys <command> --help` for each command."""
from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("journeys")
REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka.sh"


def _connection(args):
    from transforms.kafka_connection import KafkaConnection

    return KafkaConnection.from_env(env_file=args.kafka_env_file)


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka-env-file", metavar="FILE",
                        help="KEY=VALUE file of JOURNEYS_KAFKA_* settings (bootstrap, SASL, TLS); the environment "
                             "wins over it. Default bootstrap: 127.0.0.1:19092, the local broker.")
    parser.add_argument("--topic-prefix", default="", help="prefix of the Kafka topic names (default: none)")


def cmd_kafka(args) -> int:
    if not KAFKA_SCRIPT.exists():
        log.error("%s is missing: `journeys kafka` runs from a checkout of customer-journeys", KAFKA_SCRIPT)
        return 2
    status = subprocess.run([str(KAFKA_SCRIPT), args.action], check=False).returncode
    if status or args.action != "up":
        return status
    from pipelines.kafka_topics import ensure_scram_user, ensure_topics
    from transforms.kafka_connection import KafkaConnection

    scram = Path(os.environ.get("JOURNEYS_LOCAL_DIR") or REPO / ".local") / "kafka" / "scram.env"
    ensure_scram_user(_connection(args), KafkaConnection.from_env({}, env_file=scram))
    print(f"SASL_SSL (SCRAM-SHA-512) clients: --kafka-env-file {scram}")
    if args.no_topics:
        return 0
    topics = ensure_topics(_connection(args), prefix=args.topic_prefix, partitions=args.partitions)
    print("topics: " + ", ".join(f"{name} ({count} partitions)" for name, count in topics.items()))
    return 0


def cmd_flink(args) -> int:
    from pipelines.flink import SCRIPT

    extra = [args.part, str(args.lines)] if args.action == "logs" else []
    return subprocess.run([str(SCRIPT), args.action, *extra], check=False).returncode


def _start(value: str) -> dt.datetime:
    if value == "now":
        return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction between 0 and 1")
    return number


def cmd_generate(args) -> int:
    from pipelines.generate import GeneratorConfig, generate, manifest
    from pipelines.generate import sinks
    from transforms.pseudonymise import load_key

    config = GeneratorConfig(seed=args.seed, customers=args.customers, days=args.days, start=args.start,
                             first_customer=args.first_customer)
    # Synthetic people: without a configured key, one derived from the seed keeps runs reproducible.
    key = load_key() or f"journeys-generator-{args.seed}".encode()
    records = generate(config, key, fmt=args.format, out_of_order=args.out_of_order, late=args.late,
                       malformed=args.malformed, duplicates=args.duplicates)
    summary = manifest(config, records)
    if args.out:
        stats = sinks.write_avro_files(records, Path(args.out))
        where = f"Avro files in {args.out}"
    else:
        connection = _connection(args)
        if not args.no_create_topics:
            from pipelines.kafka_topics import ensure_topics

            ensure_topics(connection, prefix=args.topic_prefix, partitions=args.partitions)
        stats = sinks.produce(records, connection, topic_prefix=args.topic_prefix, rate=args.rate)
        where = f"Kafka at {connection.describe()}"
    summary["send_seconds"] = round(stats.seconds, 3)
    summary["send_rate_per_s"] = round(stats.rate, 1)
    if args.manifest:
        Path(args.manifest).write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(f"generated {len(records)} records ({', '.join(f'{t}: {n}' for t, n in summary['events_by_topic'].items())}; "
          f"malformed: {sum(summary['malformed_by_kind'].values())}) to {where} "
          f"in {stats.seconds:.1f}s = {stats.rate:,.0f} records/s")
    return 0


def cmd_peek(args) -> int:
    from pipelines.kafka_topics import MissingTopic, read_topic
    from transforms import codec

    topic, shown = args.topic_prefix + args.topic, 0
    try:
        for message in read_topic(_connection(args), topic, limit=args.limit):
            try:
                record = codec.to_json(codec.decode(args.topic, message.value, message.headers))
            except codec.DecodeError as error:
                record = {"undecodable": error.reason, "detail": error.detail}
            print(json.dumps({"partition": message.partition, "offset": message.offset, **record}))
            shown += 1
    except MissingTopic as error:
        print(f"journeys peek: {error}", file=sys.stderr)
        return 2
    if not shown:
        print(f"journeys peek: topic {topic} holds no records", file=sys.stderr)
        return 1
    return 0


def cmd_sql(args) -> int:
    """A query on the published copy of the warehouse (read-only: the writer may be running). A user's mistake (no
    such file, table or column, a syntax error) ends in one line on stderr and exit 2, not a traceback."""
    import duckdb

    from transforms.duckdb_warehouse import connect_read_only

    if not args.warehouse.exists():
        print(f"journeys sql: no warehouse at {args.warehouse} (land one with journeys backfill, or give "
              "--warehouse)", file=sys.stderr)
        return 2
    try:
        with connect_read_only(args.warehouse) as con:
            cursor = con.execute(args.query)
            if cursor.description is None:
                return 0
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
    except duckdb.Error as error:
        print(f"journeys sql: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    _print_rows(names, rows, args.format)
    return 0


def _print_rows(names: list[str], rows: list[tuple], style: str) -> None:
    if style == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    elif style == "json":  # one object per line, as jq and BI loaders take them
        for row in rows:
            print(json.dumps(dict(zip(names, row)), default=str))
    else:
        text = [["" if v is None else str(v) for v in row] for row in rows]
        widths = [max([len(n)] + [len(r[i]) for r in text]) for i, n in enumerate(names)]
        print("  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip())
        for row in text:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_report(args) -> int:
    import time

    from pipelines.report import write_report

    started = time.monotonic()
    try:
        index = write_report(args.warehouse, args.out)
    except FileNotFoundError as error:
        log.error("%s", error)
        return 2
    print(f"report: {index.resolve()} ({time.monotonic() - started:.1f} s; open it in a browser, no network needed)")
    return 0


def cmd_docs(args) -> int:
    from schemas.contracts import TABLES_DOC, tables_markdown

    out = args.out or TABLES_DOC
    out.write_text(tables_markdown(), encoding="utf-8")
    print(f"table documentation: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import schemas
    from pipelines.generate import GeneratorConfig
    from pipelines.generate.records import FORMAT_CHOICES
    from pipelines.kafka_topics import DEFAULT_PARTITIONS

    parser = argparse.ArgumentParser(prog="journeys", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = commands.add_parser("kafka", help="the local Kafka broker (KRaft, single node): up | down | status | logs",
                                description="Start, stop and inspect the local broker of deploy/local/kafka.sh; "
                                            "`up` also creates the event topics.")
    kafka.add_argument("action", choices=("up", "down", "status", "logs", "fetch"))
    kafka.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions of new topics")
    kafka.add_argument("--no-topics", action="store_true", help="`up` without creating the topics")
    _add_connection_args(kafka)
    kafka.set_defaults(func=cmd_kafka)

    flink = commands.add_parser("flink", help="the local Flink session cluster: up | down | status | logs",
                                description="Start, stop and inspect the local Apache Flink 1.19 session cluster of "
                                            "deploy/flink/flink.sh: JobManager (web UI), a TaskManager with 2 slots, "
                                            "Beam's Flink job server and a Python SDK worker pool. `journeys stream` "
                                            "and `journeys backfill --runner FlinkRunner` run on it.")
    flink.add_argument("action", choices=("up", "down", "status", "logs", "fetch", "start-taskmanager"))
    flink.add_argument("part", nargs="?", default="jobmanager",
                       choices=("jobmanager", "taskmanager", "jobserver", "workers"), help="logs: whose")
    flink.add_argument("--lines", type=int, default=50, help="logs: how many lines")
    flink.set_defaults(func=cmd_flink)

    gen = commands.add_parser("generate", help="produce seeded synthetic journeys to Kafka or Avro files",
                              description="Simulate customers and their journeys (social interactions, web sessions, "
                                          "orders) with planted ground truth, and send them to Kafka or write Avro "
                                          "container files. The same seed and knobs give the same records.")
    gen.add_argument("--customers", type=int, default=1000,
                     help="customers to simulate, prospects included (default: %(default)s)")
    gen.add_argument("--first-customer", type=int, default=0,
                     help="index of the first customer (ids C<index>): new customers for topics that hold a history")
    gen.add_argument("--days", type=float, default=30.0, help="length of the simulated history")
    gen.add_argument("--start", type=_start, default=GeneratorConfig.start.date().isoformat(),
                     help="first day, ISO-8601 (UTC if no zone) or 'now' (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=7,
                     help="random seed: the same seed and options give the same records (default: %(default)s)")
    gen.add_argument("--format", choices=FORMAT_CHOICES, default="confluent",
                     help="wire format; 'mixed' picks one per record (default: %(default)s)")
    gen.add_argument("--out-of-order", type=_fraction, default=0.0, help="fraction sent up to 10 min late")
    gen.add_argument("--late", type=_fraction, default=0.0, help="fraction sent 2-48 h after their event time")
    gen.add_argument("--malformed", type=_fraction, default=0.0,
                     help="malformed records to add, as a fraction of the events (bad bytes, truncated Avro, wrong "
                          "schema, missing fields, unknown enum values, negative amounts, far-future times)")
    gen.add_argument("--duplicates", type=_fraction, default=0.0,
                     help="fraction of events sent twice, the copy 0-19 records later, as an at-least-once "
                          "producer's retry does (the pipeline counts each once)")
    gen.add_argument("--rate", type=float, help="records per second (default: as fast as the broker takes them)")
    gen.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions of topics it creates")
    gen.add_argument("--no-create-topics", action="store_true", help="expect the topics to exist")
    gen.add_argument("--out", metavar="DIR", help="write Avro container files to DIR instead of producing to Kafka")
    gen.add_argument("--manifest", metavar="FILE", help="write counts and the planted truth as JSON")
    _add_connection_args(gen)
    gen.set_defaults(func=cmd_generate)

    peek = commands.add_parser("peek", help="print the first decoded records of a topic as JSON lines")
    peek.add_argument("topic", choices=schemas.TOPICS)
    peek.add_argument("--limit", type=int, default=10, help="records to print at most (default: %(default)s)")
    _add_connection_args(peek)
    peek.set_defaults(func=cmd_peek)

    commands.add_parser("count", add_help=False,
                        help="events per topic per event-time window from Kafka, on a Beam runner "
                             "(`journeys count --help`)")
    sql = commands.add_parser("sql", help="run a SQL query on the published warehouse copy")
    sql.add_argument("query", help="one SQL statement (DuckDB's dialect); the tables are in schemas/TABLES.md")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table",
                     help="aligned columns, CSV with a header, or one JSON object per row (default: %(default)s)")
    sql.add_argument("--warehouse", type=Path, default=Path(".local/warehouse/journeys.published.duckdb"),
                     help="DuckDB file to read (default: %(default)s)")
    sql.set_defaults(func=cmd_sql)

    report = commands.add_parser("report", help="a static HTML report with plots from the warehouse",
                                 description="Attribution by model, retention heatmap and LTV curves, social impact, "
                                             "dead letters, data quality, freshness and the tables' documentation, "
                                             "as DIR/index.html (plotly.min.js beside it: no network needed).")
    report.add_argument("--warehouse", type=Path, default=Path(".local/warehouse/journeys.published.duckdb"),
                        help="DuckDB file to read (default: %(default)s)")
    report.add_argument("--out", metavar="DIR", type=Path, default=Path(".local/report"),
                        help="folder to write (default: %(default)s)")
    report.set_defaults(func=cmd_report)

    docs = commands.add_parser("docs", help="write the tables' documentation (Markdown) from the contracts",
                               description="Regenerates schemas/TABLES.md from schemas/tables/*.json.")
    docs.add_argument("--out", type=Path, help="file to write (default: schemas/TABLES.md)")
    docs.set_defaults(func=cmd_docs)

    commands.add_parser("backfill", add_help=False,
                        help="every table from Kafka into the warehouse, on a Beam runner "
                             "(`journeys backfill --help`)")
    commands.add_parser("stream", add_help=False,
                        help="every table from Kafka into the warehouse, continuously, committed every few seconds "
                             "(`journeys stream --help`)")
    commands.add_parser("attribute", add_help=False,
                        help="every attribution model side by side on a file of aggregated paths "
                             "(`journeys attribute --help`)")
    commands.add_parser("validate", add_help=False,
                        help="the data-quality checkpoint on the warehouse now; exit 0 pass, 1 warn, 2 block "
                             "(`journeys validate --help`)")
    return parser


EXIT_UNREACHABLE = 3  # distinct from 1 (failed) and 2 (a block-severity check held publishing back)


def unreachable_broker(error: BaseException) -> bool:
    """kafka-python gave up connecting to the bootstrap servers (after its own retries, about 30 s)."""
    from kafka import errors

    from transforms.kafka_connection import KafkaUnreachable

    return (isinstance(error, errors.KafkaTimeoutError) and "bootstrap" in str(error).lower()
            or isinstance(error, KafkaUnreachable))


PIPELINES = {"count": "pipelines.event_counts", "backfill": "pipelines.backfill", "stream": "pipelines.stream",
             "validate": "pipelines.validate", "attribute": "pipelines.attribute"}  # commands with their own parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = bool(argv[:1]) and argv[0] in ("-v", "--verbose")
    command = argv[1:] if verbose else argv
    if command[:1] and command[0] in PIPELINES:  # a Beam pipeline: its own parser, and Beam's options pass through
        import importlib

        argv = command
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("journeys").setLevel(logging.DEBUG if verbose else logging.INFO)
        logging.getLogger("kafka").setLevel(logging.ERROR)  # see below
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints where a stuck job waits
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        return _unless_unreachable(lambda: importlib.import_module(PIPELINES[argv[0]]).main(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kafka-python warns whenever its I/O thread waits on the GIL, which a busy producer loop causes.
        logging.getLogger("kafka").setLevel(logging.ERROR)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    return _unless_unreachable(lambda: args.func(args))


def _unless_unreachable(command) -> int:
    """The command's exit code; an unreachable broker is answered with one line that says what to check, and why
    the client was refused when it can tell (where clients are made: KafkaConnection.consumer and the like)."""
    try:
        return command()
    except Exception as error:  # noqa: BLE001 - only an unreachable broker is answered here
        if not unreachable_broker(error):
            raise
        if getattr(error, "refused", False):
            logging.getLogger("journeys").error("Kafka refused this client: %s. Its credentials and CA come from "
                                                "JOURNEYS_KAFKA_* or --kafka-env-file.", error)
        else:
            logging.getLogger("journeys").error(
                "Kafka is unreachable: %s. Is the broker up (journeys kafka status)? Its address comes from "
                "JOURNEYS_KAFKA_BOOTSTRAP or --kafka-env-file.", error)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
