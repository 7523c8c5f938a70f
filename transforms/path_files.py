"""Aggregated paths from a file, and every attribution model side by side on them.

The file format is ChannelAttribution's: one aggregated path per line, `path;total_conversions;total_conversion_value;
total_null`, the path's channels oldest first separated by ` > `. A first line naming those columns (in any order)
is a header; the separators are the caller's choice (CSV with a comma, for example). A path's conversions and nulls
are weights: the models read it as that many paths, never as copies (transforms/attribution.py, the functions the
pipeline runs on its own paths).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections import defaultdict
from dataclasses import dataclass

from transforms.attribution import (AttributionConfig, PathSummary, Touch, heuristic_credits, markov_removal_effects,
                                    shapley_values)
from transforms.bootstrap import bootstrap_shares

COLUMNS = ("path", "total_conversions", "total_conversion_value", "total_null")
# The heuristic models a path file can feed: time_decay needs the touches' times, which aggregated paths have not.
HEURISTICS = ("first_touch", "last_touch", "last_non_direct", "linear", "position_based")


@dataclass(frozen=True)
class AggregatedPath:
    channels: tuple[str, ...]
    conversions: float
    value: float
    nulls: float


class PathFileError(ValueError):
    """A line of a path file that is not an aggregated path: the message says which line and why."""


def read_paths(text: str, separator: str = ";", step_separator: str = " > ") -> list[AggregatedPath]:
    rows = list(csv.reader(io.StringIO(text), delimiter=separator))
    columns = COLUMNS
    if rows and {cell.strip() for cell in rows[0]} >= {"path", "total_conversions"}:
        columns, rows, first = tuple(cell.strip() for cell in rows[0]), rows[1:], 2
    else:
        first = 1
    where = {name: columns.index(name) if name in columns else None for name in COLUMNS}
    paths = []
    for number, row in enumerate(rows, start=first):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(where["path"], where["total_conversions"]):
            raise PathFileError(f"line {number}: {len(row)} fields, expected {separator.join(columns)}")

        def number_in(name: str) -> float:
            index = where[name]
            if index is None or index >= len(row) or not row[index].strip():
                return 0.0
            try:
                found = float(row[index])
            except ValueError:
                raise PathFileError(f"line {number}: {name} {row[index]!r} is not a number") from None
            if not math.isfinite(found) or found < 0:
                raise PathFileError(f"line {number}: {name} {row[index]!r} is not a finite number >= 0")
            return found

        channels = tuple(step.strip() for step in row[where["path"]].split(step_separator.strip() or step_separator)
                         if step.strip())
        if not channels:
            raise PathFileError(f"line {number}: the path has no channel")
        paths.append(AggregatedPath(channels, number_in("total_conversions"), number_in("total_conversion_value"),
                                    number_in("total_null")))
    return paths


def _weight(count: float):
    """Counts stay integers where they are (exact sums in the models); a fractional count stays as it is."""
    return int(count) if float(count).is_integer() else count


def summary_of(paths: list[AggregatedPath], order: int) -> PathSummary:
    summary = PathSummary(order)
    for path in paths:
        if path.conversions:
            summary.add(list(path.channels), True, path.value, _weight(path.conversions))
        if path.nulls:
            summary.add(list(path.channels), False, 0.0, _weight(path.nulls))
    return summary


def compare_models(paths: list[AggregatedPath], markov_orders=(1, 2, 3), config: AttributionConfig = AttributionConfig(),
                   resamples: int = 0, confidence: float = 0.95) -> list[dict]:
    """One row per model and channel: the conversions and value the model credits to the channel (long format).
    A heuristic model splits each path by its credits; markov_k and shapley split each converting path among its
    channels by their shares of the model's values, its conversions by the values in conversions and its value by
    the values in value (as the pipeline's data_driven_attribution). Shapley adds its values' sampling errors (0 when
    exact; empty for the other models). The data-driven models add `paths`, the sample size behind their fit, and
    with `resamples` (0: none) the percentile intervals at `confidence` of their credits over that many bootstrap
    replicates of the paths, seeded by config.seed (transforms/bootstrap.py); empty for the heuristics."""
    rows = []
    when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)  # heuristics here read no times
    for model in HEURISTICS:
        conversions, value = defaultdict(float), defaultdict(float)
        for path in (p for p in paths if p.conversions):
            touches = [Touch(when, channel) for channel in path.channels]
            for touch, credit in zip(touches, heuristic_credits(model, touches, when, config)):
                conversions[touch.channel] += credit * path.conversions
                value[touch.channel] += credit * path.value
        rows += _rows(model, conversions, value)
    summaries = {order: summary_of(paths, order) for order in {*markov_orders, 1}}  # Shapley reads order 1's
    intervals = (bootstrap_shares(paths, markov_orders, True, resamples, config.seed, confidence).models
                 if resamples else {})
    paths_fitted = _weight(summaries[1].paths)
    for order in markov_orders:
        markov = markov_removal_effects(summaries[order])
        rows += _rows(f"markov_{order}", *summaries[order].credited(markov.shares(), markov.value_shares()),
                      paths=paths_fitted, intervals=intervals.get(f"markov_{order}"))
    summary = summaries[1]
    fit = (config.shapley_exact_max_channels, config.shapley_samples, config.seed)
    shapley, by_value = shapley_values(summary, *fit), shapley_values(summary, *fit, by_value=True)
    rows += _rows("shapley", *summary.credited(shapley.shares(), by_value.shares()),
                  errors=(shapley.standard_errors, by_value.standard_errors), paths=paths_fitted,
                  intervals=intervals.get("shapley"))
    return rows


INTERVAL_COLUMNS = ("conversions_ci_low", "conversions_ci_high", "value_ci_low", "value_ci_high")


def _rows(model: str, conversions: dict, value: dict, errors=None, paths=None, intervals=None) -> list[dict]:
    def bounds(channel: str) -> dict:
        found = intervals.get(channel) if intervals else None
        if found is None:
            return dict.fromkeys(INTERVAL_COLUMNS)
        return dict(zip(INTERVAL_COLUMNS, (found.conversions.low, found.conversions.high, found.value.low,
                                           found.value.high)))

    return [{"model": model, "channel": channel, "conversions": conversions[channel], "value": value.get(channel, 0.0),
             "standard_error_conversions": errors[0].get(channel, 0.0) if errors else None,
             "standard_error_value": errors[1].get(channel, 0.0) if errors else None,
             **bounds(channel), "paths": paths}
            for channel in sorted(conversions.keys() | value.keys())]
