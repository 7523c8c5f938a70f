"""`journeys attribute --paths FILE`: path files in ChannelAttribution's format, every model side by side, written
as CSV, Parquet or a DuckDB table and read back."""
import subprocess
import sys

import duckdb
import pyarrow.parquet as pq
import pytest

from transforms.attribution import AttributionConfig
from transforms.path_files import HEURISTICS, INTERVAL_COLUMNS, AggregatedPath, PathFileError, compare_models, read_paths

FILE = """path;total_conversions;total_conversion_value;total_null
Paid Search > Email > Direct;2;300.0;5
Email;1;40.0;3
Display > Paid Search;0;0;4
"""


def _by_model(rows):
    return {(row["model"], row["channel"]): (row["conversions"], row["value"]) for row in rows}


def _flat(rows):
    return {(*key, what): number for key, pair in _by_model(rows).items() for what, number in zip("cv", pair)}


def test_a_path_file_reads_with_or_without_a_header_and_with_any_separators():
    expected = [AggregatedPath(("Paid Search", "Email", "Direct"), 2, 300.0, 5), AggregatedPath(("Email",), 1, 40.0, 3),
                AggregatedPath(("Display", "Paid Search"), 0, 0, 4)]
    assert read_paths(FILE) == expected
    assert read_paths(FILE.split("\n", 1)[1]) == expected  # no header: the columns in ChannelAttribution's order
    as_csv = "total_null,path,total_conversions\n5,Paid Search/Email/Direct,2\n3,Email,1\n4,Display/Paid Search,0\n"
    assert [(p.channels, p.conversions, p.value, p.nulls) for p in read_paths(as_csv, ",", "/")] == [
        (p.channels, p.conversions, 0.0, p.nulls) for p in expected]
    for bad, why in (("A > B;two;1;0", "line 1: total_conversions 'two' is not a number"),
                     ("path;total_conversions\nA;1\n ;1", "line 3: the path has no channel"),
                     ("A > B", "line 1: 1 fields"), ("A;-1;0;0", "line 1: total_conversions '-1' is not a finite")):
        with pytest.raises(PathFileError, match=why):
            read_paths(bad)


def test_heuristic_totals_equal_the_hand_computed_ones():
    rows = _by_model(compare_models(read_paths(FILE), markov_orders=()))
    # Paid Search > Email > Direct converts twice (300.0 in all), Email once (40.0); Display > Paid Search never.
    assert rows[("first_touch", "Paid Search")] == (2.0, 300.0) and rows[("first_touch", "Email")] == (1.0, 40.0)
    assert rows[("last_touch", "Direct")] == (2.0, 300.0)
    assert rows[("last_non_direct", "Email")] == (3.0, 340.0)
    assert rows[("linear", "Email")] == pytest.approx((2 / 3 + 1, 100.0 + 40.0))
    assert rows[("position_based", "Email")] == pytest.approx((2 * 0.2 + 1, 300.0 * 0.2 + 40.0))
    assert ("first_touch", "Display") not in rows  # no conversion: no credit, no row


def test_weights_behave_exactly_like_copies_and_shapley_is_efficient():
    weighted = read_paths("A > B;3;30;2\nB;2;10;5\nC > A;1;7;1\n")
    copies = read_paths("A > B;1;10;0\n" * 3 + "A > B;0;0;1\n" * 2 + "B;1;5;0\n" * 2 + "B;0;0;1\n" * 5
                        + "C > A;1;7;1\n")
    assert _flat(compare_models(weighted)) == pytest.approx(_flat(compare_models(copies)), rel=1e-12)
    shapley = [row for row in compare_models(weighted) if row["model"] == "shapley"]
    assert sum(row["conversions"] for row in shapley) == pytest.approx(6.0)
    assert sum(row["value"] for row in shapley) == pytest.approx(47.0)
    assert {row["standard_error_conversions"] for row in shapley} == {0.0}  # exact


def test_the_data_driven_rows_carry_seeded_intervals_around_their_credits_and_their_sample_size():
    paths = read_paths(FILE + "Email > Display;3;90;2\nDirect;1;15;6\n")
    rows = compare_models(paths, resamples=300)
    assert rows == compare_models(paths, resamples=300)  # seeded: config.seed
    assert rows != compare_models(paths, config=AttributionConfig(seed=1), resamples=300)
    for row in rows:
        if row["model"] in HEURISTICS:
            assert all(row[column] is None for column in (*INTERVAL_COLUMNS, "paths"))
            continue
        assert row["paths"] == 27  # 2 + 5 + 1 + 3 + 0 + 4 + 3 + 2 + 1 + 6: converting and not
        assert row["conversions_ci_low"] <= row["conversions"] <= row["conversions_ci_high"], row
        assert row["value_ci_low"] <= row["value"] <= row["value_ci_high"], row
    without = compare_models(paths, resamples=0)
    assert {row["paths"] for row in without if row["model"] == "shapley"} == {27}
    assert all(row[column] is None for row in without for column in INTERVAL_COLUMNS)
    assert _flat(without) == _flat(rows)  # the point estimates are the same either way


def _attribute(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "attribute", *args], capture_output=True, text=True,
                          timeout=120, input=stdin)


def test_the_command_writes_csv_parquet_and_a_duckdb_table_that_read_back_alike(tmp_path):
    (tmp_path / "paths.txt").write_text(FILE)
    printed = _attribute("--paths", str(tmp_path / "paths.txt"))
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == ("model,channel,conversions,value,standard_error_conversions,standard_error_value,"
                        "conversions_ci_low,conversions_ci_high,value_ci_low,value_ci_high,paths")
    models = {line.split(",")[0] for line in lines[1:]}
    assert models == {"first_touch", "last_touch", "last_non_direct", "linear", "position_based", "markov_1",
                      "markov_2", "markov_3", "shapley"}
    for out in ("c.csv", "c.parquet", "c.duckdb", "c.duckdb:side_by_side"):
        done = _attribute("--paths", "-", "--out", str(tmp_path / out), stdin=FILE)
        assert done.returncode == 0, done.stderr
    with duckdb.connect() as con:
        from_csv = con.execute(f"SELECT * FROM read_csv('{tmp_path / 'c.csv'}') ORDER BY 1, 2").fetchall()
    from_parquet = sorted(tuple(row.values()) for row in pq.read_table(tmp_path / "c.parquet").to_pylist())
    with duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True) as con:
        tables = [con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                  for t in ("attribution_comparison", "side_by_side")]
    assert from_csv == from_parquet == tables[0] == tables[1] and len(from_csv) == len(lines) - 1


def test_a_malformed_line_is_refused_with_its_number(tmp_path):
    done = _attribute("--paths", "-", stdin=FILE + "A > B;lots;0;0\n")
    assert done.returncode == 2 and "line 5: total_conversions 'lots' is not a number" in done.stderr
    assert _attribute("--paths", "-", "--out", str(tmp_path / "x.xlsx"), stdin=FILE).returncode == 2
    assert _attribute("--paths", "-", "--resamples", "1", stdin=FILE).returncode == 2
