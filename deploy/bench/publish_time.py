"""Publishing time: how long readers wait, at each commit, for a new copy of a landed warehouse, against DuckDB's own
whole-database copy in the same run.

    .venv/bin/python deploy/bench/publish_time.py [--warehouse .local/warehouse/journeys.duckdb] [--repeat 3]
        [--grow 10] [--json result.json]

Works on a copy, so a running stream is not disturbed. Each round first commits a stream-sized change (a
thousand touchpoints upserted), as a stream does before it publishes, then times `DuckDBWarehouse.publish`
(checkpoint, then the file's bytes copied aside and renamed over the readers' copy) and, on the same file,
`COPY FROM DATABASE` into a new file (how the warehouse published before); the fastest of --repeat rounds of each.
--grow N first makes the copy's two largest tables N times as large (the stored rows again under new keys): a
warehouse of N times the history without backfilling it.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from report import peak_rss_mib, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, default=Path(".local/warehouse/journeys.duckdb"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--grow", type=int, default=1, help="touchpoints and order_attribution N times as large")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    import shutil

    from transforms.duckdb_warehouse import DuckDBWarehouse

    with tempfile.TemporaryDirectory(dir=args.warehouse.parent) as scratch:
        copy = Path(scratch) / "journeys.duckdb"
        shutil.copyfile(args.warehouse, copy)
        warehouse = DuckDBWarehouse(copy)
        con = warehouse.connection
        for table, key in (("touchpoints", "touch_id"), ("order_attribution", "order_id")):
            if args.grow > 1:
                con.execute(f'INSERT INTO "{table}" SELECT "{table}".* REPLACE ({key} || \'~\' || k AS {key}) '
                            f'FROM "{table}", range(1, {args.grow}) copies(k)')
        con.execute("CHECKPOINT")
        rows = {table: con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}

        def change():  # a thousand stored touchpoints written again: an upsert's worth of new blocks
            sample = con.execute("SELECT * FROM touchpoints LIMIT 1000").to_arrow_table()
            warehouse.commit({"touchpoints": sample})

        def timed(work) -> float:
            times = []
            for _ in range(args.repeat):
                change()
                started = time.perf_counter()
                work()
                times.append(time.perf_counter() - started)
            return round(min(times), 3)

        def copy_database():
            whole = Path(scratch) / "whole.duckdb"
            whole.unlink(missing_ok=True)
            own = con.execute("SELECT current_database()").fetchone()[0]
            con.execute(f"ATTACH '{whole}' AS whole")
            try:
                con.execute(f'COPY FROM DATABASE "{own}" TO whole')
            finally:
                con.execute("DETACH whole")

        try:
            publish_s = timed(warehouse.publish)
            copy_database_s = timed(copy_database)
            size = copy.stat().st_size
        finally:
            warehouse.close()
    report({"warehouse": str(args.warehouse), "file_mib": round(size / 2**20, 1), "rows": sum(rows.values()),
            "touchpoints": rows.get("touchpoints"), "grow": args.grow, "repeat": args.repeat, "publish_s": publish_s,
            "copy_from_database_s": copy_database_s, "peak_rss_mib": peak_rss_mib()}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
