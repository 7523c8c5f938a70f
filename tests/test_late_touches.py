"""A touch that reaches attribution after its non-converting path left (late data; on Flink, a stitched touch the
watermark overtook) cuts the customer's paths again, and the data-driven fits end as a backfill's: the changed
path leaves again with a higher revision, the path it no longer is leaves as a retraction, and every window it
touched is fitted again (late firings). The stream runs on Prism (TestStream), the backfill on FnApiRunner."""
import datetime as dt
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines.runners import runner_args
from schemas.contracts import RETRACTED
from transforms.duckdb_warehouse import DuckDBWarehouse
from transforms.warehouse import latest_rows
from transforms.customer_journeys import AttributeOrders, DataDrivenAttribution, JourneyConfig, non_converting_paths

pytestmark = [pytest.mark.slow]
CONFIG = JourneyConfig()
MAY = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _touch(customer: str, touch_id: str, day: float, channel: str):
    return customer, {"touch_id": touch_id, "time": MAY + dt.timedelta(days=day), "channel": channel}


# C1's three touches are one path (all within 30 days of the first); the last one arrives months late. C2's lone
# touch keeps the first path's window non-empty once that path has moved on to the last touch's window.
ON_TIME = [_touch("C1", "a", 0, "Email"), _touch("C1", "b", 9, "Direct"), _touch("C2", "x", 8, "Paid Search")]
LATE = [_touch("C1", "c", 26, "Organic Search")]


def _at(when: dt.datetime) -> Timestamp:
    return Timestamp.from_utc_datetime(when)


class _Collect(beam.DoFn):
    def __init__(self, path: str, kind: str):
        self.path, self.kind = path, kind

    def process(self, row):
        with open(self.path, "a") as out:
            out.write(json.dumps([self.kind, row], default=str) + "\n")


def _attribute_and_fit(touches, path: str) -> None:
    orders = touches.pipeline | "NoOrders" >> beam.Create([]).with_output_types(dict)
    paths = (touches, orders) | AttributeOrders(CONFIG)
    _ = paths["paths"] | "CollectPaths" >> beam.ParDo(_Collect(path, "path"))
    _ = (paths["paths"] | DataDrivenAttribution(7.0, CONFIG)
         | "Firing" >> beam.Map(lambda row, pane=beam.DoFn.PaneInfoParam: {**row, "pane": pane.index})
         | "Global" >> beam.WindowInto(beam.window.GlobalWindows())
         | "CollectFits" >> beam.ParDo(_Collect(path, "fit")))


def _stream(path: str, on_time=ON_TIME) -> None:
    stream = (TestStream()
              .add_elements([TimestampedValue(t, _at(t[1]["time"])) for t in on_time])
              # C1's first path and its window are done; months on, as a flush moves a replayed history on
              .advance_watermark_to(_at(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)))
              .add_elements([TimestampedValue(t, _at(t[1]["time"])) for t in LATE])
              .advance_watermark_to_infinity())
    with TestPipeline(options=PipelineOptions(runner_args("PrismRunner", streaming=True))) as pipeline:
        _attribute_and_fit(pipeline | stream, path)


def _backfill(path: str, on_time=ON_TIME) -> None:
    with TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        touches = (pipeline | beam.Create(on_time + LATE)
                   | beam.Map(lambda t: TimestampedValue(t, _at(t[1]["time"]))))
        _attribute_and_fit(touches, path)


def _read(path: str) -> tuple[list, list]:
    with open(path) as lines:
        items = [json.loads(line) for line in lines]
    return [row for kind, row in items if kind == "path"], [row for kind, row in items if kind == "fit"]


def _current_paths(paths: list) -> list:
    """Per path key, the highest revision, without the retracted ones: what a fit counts."""
    latest = {}
    for path in paths:
        key = (path["customer_id"], path["touch_ids"][0])
        if key not in latest or path["revision"] > latest[key]["revision"]:
            latest[key] = path
    return sorted((p["customer_id"], p["touch_ids"]) for p in latest.values() if not p.get("retracted"))


def _last_fits(fits: list) -> dict:
    """Per window, the rows of its last fit (a fit's rows share its revision; a window fitted again on the same
    paths gives the same rows again)."""
    last = {}
    for row in fits:
        window = row["window_start"]
        if window not in last or last[window][0] != row["revision"]:
            last[window] = (row["revision"], set())
        last[window][1].add((row["model"], row["channel"], round(row["value"], 9), row["paths"]))
    return {window: sorted(rows) for window, (_, rows) in last.items()}


def test_a_late_touch_joins_its_path_and_the_fits_end_as_a_backfills(tmp_path):
    _stream(str(tmp_path / "stream.jsonl"))
    _backfill(str(tmp_path / "backfill.jsonl"))
    streamed_paths, streamed_fits = _read(str(tmp_path / "stream.jsonl"))
    batch_paths, batch_fits = _read(str(tmp_path / "backfill.jsonl"))

    assert _current_paths(batch_paths) == [("C1", ["a", "b", "c"]), ("C2", ["x"])]
    assert _current_paths(streamed_paths) == _current_paths(batch_paths)
    # The stream sent C1's path without the late touch first; then its retraction (at its old time, in its old
    # window) and the whole path (the late touch's window), each with a newer revision under the same key.
    c1 = [(p["touch_ids"], bool(p.get("retracted")), p["revision"]) for p in streamed_paths if p["customer_id"] == "C1"]
    assert [(ids, retracted) for ids, retracted, _ in c1] == [(["a", "b"], False), (["a", "b"], True),
                                                              (["a", "b", "c"], False)]
    assert [revision for _, _, revision in c1] == sorted({revision for _, _, revision in c1})
    # The first window was fitted again without it: every window's last fit is the backfill's.
    assert _last_fits(streamed_fits) == _last_fits(batch_fits)
    assert len(_last_fits(batch_fits)) == 2


def _landed(fits: list, path) -> list:
    """The fits as a stream's writer lands them: the first fit alone, then every later one in one commit (after a
    restart, a replay's first commit holds all of them), each ranked by its firing. The table BI reads."""
    parse = lambda row: ((row.pop("pane"),), {**row, "currency": CONFIG.rates.reporting_currency,  # as journey_tables
                                             **{c: dt.datetime.fromisoformat(row[c])
                                                for c in ("window_start", "window_end")}})
    items = [parse(dict(row)) for row in fits]
    first = [item for item in items if (item[1]["window_start"], item[0]) == (items[0][1]["window_start"], items[0][0])]
    warehouse = DuckDBWarehouse(path)
    try:
        for commit in (first, items):
            warehouse.commit({"data_driven_attribution": latest_rows("data_driven_attribution", commit)})
        return sorted(map(str, warehouse.connection.execute(
            "SELECT * FROM data_driven_attribution").fetchall()))
    finally:
        warehouse.close()


def test_a_window_whose_only_path_a_late_touch_moved_away_is_retracted(tmp_path):
    """Without C2 the first path's window is left with no path at all: the rows its first fit landed go."""
    alone = [t for t in ON_TIME if t[0] == "C1"]
    _stream(str(tmp_path / "stream.jsonl"), alone)
    _backfill(str(tmp_path / "backfill.jsonl"), alone)
    _, streamed_fits = _read(str(tmp_path / "stream.jsonl"))
    _, batch_fits = _read(str(tmp_path / "backfill.jsonl"))

    week = dt.timedelta(days=7)
    first_window = str(EPOCH + (MAY + dt.timedelta(days=9) - EPOCH) // week * week)  # the path [a, b] ends on day 9
    fitted = {row["window_start"] for row in streamed_fits if not row.get(RETRACTED)}
    assert fitted == {row["window_start"] for row in batch_fits} | {first_window}
    gone = [row for row in streamed_fits if row.get(RETRACTED)]
    assert {(row["window_start"], row["model"], row["channel"]) for row in gone} == {
        (first_window, model, channel) for model in ("markov", "shapley") for channel in ("Direct", "Email")}
    assert _landed(streamed_fits, tmp_path / "stream.duckdb") == _landed(batch_fits, tmp_path / "batch.duckdb")


def test_a_late_touch_before_a_path_that_left_starts_it_again_and_retracts_the_old_one():
    """Paths are cut from the earliest unused touch: one that comes late and earlier than a path's start makes a
    different cut, whose old path must be retracted (pure function, the cut itself)."""
    lookback = CONFIG.lookback
    touches = [dict(_touch("C", i, day, "Direct")[1]) for i, day in (("p", 10), ("q", 35), ("r", 45))]
    assert [[t["touch_id"] for t in p] for p in non_converting_paths(touches, lookback)] == [["p", "q"], ["r"]]
    late = dict(_touch("C", "o", 2, "Email")[1])
    assert [[t["touch_id"] for t in p] for p in non_converting_paths(touches + [late], lookback)] == [
        ["o", "p"], ["q", "r"]]
