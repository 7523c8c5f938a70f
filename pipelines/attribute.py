"""`journeys attribute --paths FILE`: every attribution model side by side on a file of aggregated paths."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

FORMAT = """\
The path file holds one aggregated path per line, in ChannelAttribution's format:

    path;total_conversions;total_conversion_value;total_null
    Paid Search > Email > Direct;12;1830.50;40
    Organic Social > Paid Search;3;210.00;95

Channels oldest first, separated by ' > ' (--step-separator); fields by ';' (--separator, e.g. ',' for CSV). A
first line naming the columns (in any order) is a header; without one the columns come in the order above.
total_conversion_value and total_null may be left out (0). Counts are weights: a path with 12 conversions counts
as twelve paths, never copied.

The output is long: model,channel,conversions,value,standard_error_conversions,standard_error_value and the
interval columns below, with the models first_touch, last_touch, last_non_direct, linear, position_based
(time_decay needs the touches' times, which aggregated paths have not), markov_1..markov_K (conversions from the
removal effects on conversions, value from the removal effects on value) and shapley (exact up to
--shapley-exact-max-channels channels, sampled beyond, with its values' standard errors).

The data-driven rows add conversions_ci_low, conversions_ci_high, value_ci_low, value_ci_high: the percentile
interval (--confidence, default 0.95) of the conversions and value the model credits to the channel over
--resamples bootstrap replicates of the paths (Poisson weights: a path with c conversions and u nulls draws
Poisson(c) conversions, its value scaled per conversion, and Poisson(u) nulls; each replicate refitted; seeded by
--seed), and paths, the sample size behind the fit (every path, converting and not, counted by its weight). The
heuristic rows leave all five empty; --resamples 0 leaves the intervals empty. The intervals are of the sampling
of paths only: not of the model's assumptions, nor (shapley beyond --shapley-exact-max-channels) of its
permutation sampling, whose standard errors are the standard_error columns; a replicate's Shapley values are
computed exactly.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="journeys attribute", description=__doc__, epilog=FORMAT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", required=True, type=Path, metavar="FILE", help="the path file ('-': stdin)")
    parser.add_argument("--separator", default=";", help="between a line's fields (default ';')")
    parser.add_argument("--step-separator", default=" > ", help="between a path's channels (default ' > ')")
    parser.add_argument("--markov-orders", default="1,2,3",
                        help="orders of the Markov chains, comma-separated (default 1,2,3)")
    parser.add_argument("--shapley-exact-max-channels", type=int, default=12,
                        help="exact Shapley values up to this many channels, sampled beyond (default 12)")
    parser.add_argument("--shapley-samples", type=int, default=2000, help="permutations when sampled (default 2000)")
    parser.add_argument("--resamples", type=int, default=200,
                        help="bootstrap replicates of the paths behind the data-driven models' intervals (default "
                             "200; 0: no intervals)")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the intervals (default 0.95)")
    parser.add_argument("--seed", type=int, default=0,
                        help="of the bootstrap and the sampled Shapley values (default 0)")
    parser.add_argument("--out", metavar="FILE",
                        help="write there instead of CSV to stdout: FILE.csv, FILE.parquet, or FILE.duckdb (the "
                             "table attribution_comparison, replaced; FILE.duckdb:TABLE names another)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from transforms.attribution import AttributionConfig
    from transforms.path_files import PathFileError, compare_models, read_paths

    args = build_parser().parse_args(argv)
    if args.out is not None and _destination(args.out)[0].suffix not in (".csv", ".parquet", ".duckdb"):
        print(f"journeys attribute: --out {args.out}: a .csv, .parquet or .duckdb file", file=sys.stderr)
        return 2
    text = sys.stdin.read() if str(args.paths) == "-" else args.paths.read_text()
    try:
        paths = read_paths(text, args.separator, args.step_separator)
    except PathFileError as error:
        print(f"journeys attribute: {args.paths}: {error}", file=sys.stderr)
        return 2
    orders = tuple(int(order) for order in args.markov_orders.split(",") if order.strip())
    config = AttributionConfig(shapley_exact_max_channels=args.shapley_exact_max_channels,
                               shapley_samples=args.shapley_samples, seed=args.seed)
    if args.resamples == 1 or args.resamples < 0 or not 0 < args.confidence < 1:
        print("journeys attribute: --resamples 0 or at least 2, --confidence between 0 and 1", file=sys.stderr)
        return 2
    rows = compare_models(paths, orders, config, args.resamples, args.confidence)
    if args.out is None:
        _write_csv(rows, sys.stdout)
    else:
        written = write(rows, args.out)
        print(f"{len(rows)} rows ({len(paths)} paths) → {written}", file=sys.stderr)
    return 0


COLUMNS = ("model", "channel", "conversions", "value", "standard_error_conversions", "standard_error_value",
           "conversions_ci_low", "conversions_ci_high", "value_ci_low", "value_ci_high", "paths")


def _write_csv(rows: list[dict], out) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def write(rows: list[dict], destination: str) -> str:
    """The comparison as CSV, Parquet or a DuckDB table, chosen by the file's suffix; where it went."""
    path, table = _destination(destination)
    if path.suffix == ".csv":
        with open(path, "w", newline="") as out:
            _write_csv(rows, out)
        return str(path)
    import pyarrow as pa

    frame = pa.Table.from_pylist(rows, schema=pa.schema([
        ("model", pa.string()), ("channel", pa.string()), ("conversions", pa.float64()), ("value", pa.float64()),
        ("standard_error_conversions", pa.float64()), ("standard_error_value", pa.float64()),
        *((column, pa.float64()) for column in COLUMNS[6:])]))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(frame, path)
        return str(path)
    if path.suffix == ".duckdb":
        import duckdb

        table = table or "attribution_comparison"
        with duckdb.connect(str(path)) as con:
            con.register("comparison", frame)
            quoted = table.replace('"', '""')
            con.execute(f'CREATE OR REPLACE TABLE "{quoted}" AS SELECT * FROM comparison')
        return f"{path} (table {table})"
    raise ValueError(f"{destination}: a .csv, .parquet or .duckdb file")


def _destination(destination: str) -> tuple[Path, str]:
    """(file, DuckDB table or '') of --out."""
    path, _, table = destination.partition(".duckdb:")
    return Path(path + ".duckdb" if table else path), table


if __name__ == "__main__":
    sys.exit(main())
