"""Attribution models: hand-checked cases, the Markov closed form, and properties over generated paths."""
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.attribution import (HEURISTIC_MODELS, AttributionConfig, PathSummary, Touch, data_driven_credits,
                                    heuristic_credits, markov_removal_effects, prepare_path, shapley_values,
                                    summarise, transform_path)

T0 = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


def path(*channels, days_apart=1.0):
    return [Touch(T0 + i * days_apart * DAY, c) for i, c in enumerate(channels)]


def test_heuristic_models_on_a_four_touch_path():
    touches = path("Paid Social", "Organic Search", "Email", "Direct")
    converted = touches[-1].time
    assert heuristic_credits("first_touch", touches, converted) == [1, 0, 0, 0]
    assert heuristic_credits("last_touch", touches, converted) == [0, 0, 0, 1]
    assert heuristic_credits("last_non_direct", touches, converted) == [0, 0, 1, 0]
    assert heuristic_credits("linear", touches, converted) == [0.25] * 4
    assert heuristic_credits("position_based", touches, converted) == pytest.approx([0.4, 0.1, 0.1, 0.4])
    decay = heuristic_credits("time_decay", touches, converted, AttributionConfig(half_life_days=1))
    assert decay == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])  # each day older halves the weight


def test_position_based_with_one_or_two_touches_and_custom_weights():
    config = AttributionConfig(position_weights=(0.3, 0.4, 0.3))
    assert heuristic_credits("position_based", path("A"), T0, config) == [1.0]
    assert heuristic_credits("position_based", path("A", "B"), T0, config) == [0.5, 0.5]
    assert heuristic_credits("position_based", path("A", "B", "C"), T0, config) == pytest.approx([0.3, 0.4, 0.3])


def test_all_direct_path_keeps_its_last_direct_touch():
    assert heuristic_credits("last_non_direct", path("Direct", "Direct"), T0) == [0, 1]


def test_prepare_path_lookback_steps_include_exclude_and_no_touch():
    touches = path("Display", "Email", "Paid Search", "Direct", days_apart=10)
    converted = touches[-1].time
    assert [t.channel for t in prepare_path(touches, converted, AttributionConfig(lookback_days=15))] == [
        "Paid Search", "Direct"]
    assert [t.channel for t in prepare_path(touches, converted, AttributionConfig(lookback_days=60, lookback_steps=2))] == [
        "Paid Search", "Direct"]
    excluded = prepare_path(touches, converted, AttributionConfig(lookback_days=60, exclude_channels=frozenset({"Direct"})))
    assert [t.channel for t in excluded] == ["Display", "Email", "Paid Search"]
    only = prepare_path(touches, converted, AttributionConfig(lookback_days=60, include_channels=frozenset({"Email"})))
    assert [t.channel for t in only] == ["Email"]
    assert [t.channel for t in prepare_path([], converted, AttributionConfig())] == ["Direct"]
    assert prepare_path(touches, converted, AttributionConfig(lookback_days=60, lookback_steps=0))[0].channel == "Direct"


def test_path_transforms():
    touches = path("A", "A", "B", "A", "Direct", "Direct")
    names = lambda how: [t.channel for t in transform_path(touches, how)]
    assert names("unique") == ["A", "A", "B", "A", "Direct", "Direct"]
    assert names("exposure") == ["A", "B", "A", "Direct"]
    assert names("first") == ["A", "B", "Direct"]
    assert names("remove_if_last_and_not_all") == ["A", "A", "B", "A"]
    assert [t.channel for t in transform_path(path("Direct", "Direct"), "remove_if_last_and_not_all")] == ["Direct", "Direct"]
    with pytest.raises(ValueError):
        transform_path(touches, "sideways")


def test_markov_removal_effects_equal_the_closed_form():
    # START→A 2/3, START→B 1/3; A→B 1/2, A→null 1/2; B→conversion 1.
    # P(conv) = 2/3·1/2 + 1/3 = 2/3. Without A: 1/3 → effect 1/2. Without B: 0 → effect 1.
    result = markov_removal_effects([(["A", "B"], True), (["A"], False), (["B"], True)])
    assert result.conversion_probability == pytest.approx(2 / 3)
    assert result.removal_effects == pytest.approx({"A": 0.5, "B": 1.0})
    assert result.shares() == pytest.approx({"A": 1 / 3, "B": 2 / 3})


def test_markov_second_order_distinguishes_what_came_before():
    # With order 2, "B after A" converts and "B first" does not: A's removal costs every conversion.
    paths = [(["A", "B"], True), (["B"], False), (["A", "B"], True), (["B", "B"], False)]
    first_order = markov_removal_effects(paths, order=1)
    second = markov_removal_effects(paths, order=2)
    assert second.removal_effects["A"] == pytest.approx(1.0)
    assert second.removal_effects["B"] == pytest.approx(1.0)
    assert first_order.removal_effects["A"] < 1.0


def test_exact_shapley_on_a_hand_checked_game():
    # v({A}) = 0, v({B}) = 1, v({A,B}) = 2 → A = (0 + 1)/2, B = (1 + 2)/2.
    result = shapley_values([(["A", "B"], True), (["B"], True), (["A"], False)])
    assert result.exact and result.values == pytest.approx({"A": 0.5, "B": 1.5})


def test_sampled_shapley_reports_its_error_and_agrees_with_exact():
    paths = [(list(p), True) for p in (["A", "B"], ["B", "C"], ["C"], ["A", "D", "E"], ["E"], ["B", "E"], ["D"])]
    exact = shapley_values(paths)
    sampled = shapley_values(paths, exact_max_channels=0, samples=4000, seed=3)
    assert not sampled.exact
    for channel, value in exact.values.items():
        error = sampled.standard_errors[channel]
        assert error > 0 and abs(sampled.values[channel] - value) <= 4 * error + 1e-9, channel


touch_paths = st.lists(st.tuples(st.floats(min_value=0, max_value=29, allow_nan=False),
                                 st.sampled_from(["Direct", "Email", "Paid Search", "Organic Social", "Display"])),
                       min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(raw=touch_paths, model=st.sampled_from(HEURISTIC_MODELS), transform=st.sampled_from(
    ["unique", "exposure", "first", "frequency", "remove_if_last_and_not_all"]), steps=st.none() | st.integers(0, 5))
def test_every_heuristic_model_gives_each_order_credits_summing_to_one(raw, model, transform, steps):
    converted = T0 + 30 * DAY
    touches = [Touch(converted - age * DAY, channel) for age, channel in raw]
    config = AttributionConfig(path_transform=transform, lookback_steps=steps)
    prepared = prepare_path(touches, converted, config)
    credits = heuristic_credits(model, prepared, converted, config)
    assert len(credits) == len(prepared)
    assert sum(credits) == pytest.approx(1.0) and all(c >= 0 for c in credits)


@settings(max_examples=100, deadline=None)
@given(paths=st.lists(st.tuples(st.lists(st.sampled_from("ABCDE"), min_size=1, max_size=6), st.booleans()),
                      min_size=1, max_size=30))
def test_data_driven_values_and_credits_are_consistent(paths):
    markov = markov_removal_effects(paths)
    assert 0.0 <= markov.conversion_probability <= 1.0 + 1e-9
    shapley = shapley_values(paths)
    assert sum(shapley.values.values()) == pytest.approx(sum(converted for _, converted in paths))  # efficiency
    for steps, _ in paths:
        touches = path(*steps)
        for values in (markov.shares(), shapley.values):
            assert sum(data_driven_credits(touches, values)) == pytest.approx(1.0)


valued_paths = st.lists(st.tuples(st.lists(st.sampled_from("ABCD"), min_size=1, max_size=5), st.booleans(),
                                  st.floats(min_value=0, max_value=1e6, allow_nan=False)), min_size=1, max_size=40)


def _results(summary: PathSummary):
    markov, shapley = markov_removal_effects(summary), shapley_values(summary)
    by_value = shapley_values(summary, by_value=True)
    return (markov.removal_effects, markov.value_removal_effects, markov.expected_value, shapley.values,
            by_value.values, summary.credited(markov.shares(), markov.value_shares()),
            summary.credited(shapley.shares(), by_value.shares()), summary.revision(),
            summary.distinct_paths())  # what a bootstrap of the fit resamples


@settings(max_examples=100, deadline=None)
@given(paths=valued_paths, cut=st.integers(0, 40), order=st.integers(1, 3), data=st.data())
def test_a_summary_merged_from_parts_in_any_order_gives_exactly_the_whole(paths, cut, order, data):
    whole = summarise(paths, order)
    shuffled = data.draw(st.permutations(paths))
    parts = [summarise(shuffled[:cut], order), summarise(shuffled[cut:], order)]
    merged = PathSummary(order).merge(parts[1]).merge(parts[0])
    assert _results(merged) == _results(whole)  # exactly: integer counts, exactly rounded value sums


def test_a_weighted_path_counts_as_that_many_copies():
    copies = summarise([(["A", "B"], True, 10.0)] * 3 + [(["B"], False, 0.0)] * 2 + [(["A"], True, 5.0)])
    weighted = summarise([(["A", "B"], True, 30.0, 3), (["B"], False, 0.0, 2), (["A"], True, 5.0)])
    assert _results(weighted) == _results(copies)
    assert weighted.paths == 6
    assert [(p.channels, p.conversions, p.value, p.nulls) for p in weighted.distinct_paths()] == [
        (("A",), 1, 5.0, 0), (("A", "B"), 3, 30.0, 0), (("B",), 0, 0.0, 2)]


def test_credited_splits_each_converting_path_by_the_shares():
    summary = summarise([(["A", "B", "A"], True, 90.0), (["B"], True, 10.0), (["C"], False, 0.0)])
    conversions, value = summary.credited({"A": 0.75, "B": 0.25, "C": 0.0})
    assert conversions == pytest.approx({"A": 0.75, "B": 1.25})
    assert value == pytest.approx({"A": 67.5, "B": 32.5})


def _value_weighted_solve(paths, order: int, removed=None) -> float:
    """The value a path from START earns, computed apart from PathSummary: the order-k chain as a matrix with one
    absorbing conversion state per state it converts from, its fundamental matrix N = (I - Q)^-1, and each
    absorption B = N R paid the mean value of the paths that converted there."""
    import numpy as np

    counts, values = {}, {}
    for channels, converted, value in paths:
        states = ["(start)"] + [tuple(channels[max(0, i - order + 1): i + 1]) for i in range(len(channels))]
        for here, there in zip(states, states[1:]):
            counts.setdefault(here, {}).setdefault(there, 0)
            counts[here][there] += 1
        end = ("conv", states[-1]) if converted else "null"
        counts.setdefault(states[-1], {}).setdefault(end, 0)
        counts[states[-1]][end] += 1
        if converted:
            values[states[-1]] = values.get(states[-1], 0.0) + value
    transient = [s for s in counts if s == "(start)" or removed not in s]
    ends = sorted({("conv", s) for s in values}, key=str)
    q, r = np.zeros((len(transient), len(transient))), np.zeros((len(transient), len(ends)))
    for i, state in enumerate(transient):
        total = sum(counts[state].values())
        for target, n in counts[state].items():
            if target in ends:
                r[i, ends.index(target)] = n / total
            elif target in transient:
                q[i, transient.index(target)] = n / total
    absorbed = np.linalg.inv(np.eye(len(transient)) - q) @ r
    paid = [values[s] / counts[s][("conv", s)] for _, s in ends]
    return float(absorbed[0] @ np.array(paid))


@settings(max_examples=60, deadline=None)
@given(paths=valued_paths, order=st.integers(1, 3))
def test_value_removal_effects_equal_an_independent_value_weighted_absorbing_chain_solve(paths, order):
    markov = markov_removal_effects(paths, order)
    whole = _value_weighted_solve(paths, order)
    assert markov.expected_value == pytest.approx(whole, rel=1e-9, abs=1e-9)
    for channel, effect in markov.value_removal_effects.items():
        expected = 1.0 - _value_weighted_solve(paths, order, channel) / whole if whole > 0 else 0.0
        assert effect == pytest.approx(expected, rel=1e-9, abs=1e-9), channel


def test_value_removal_effects_follow_the_large_orders_where_conversion_effects_cannot_see_them():
    # A and B convert equally often, but A's orders are worth ten times B's.
    paths = [(["A"], True, 100.0)] * 3 + [(["B"], True, 10.0)] * 3 + [(["A"], False, 0.0), (["B"], False, 0.0)]
    markov = markov_removal_effects(paths)
    assert markov.shares() == pytest.approx({"A": 0.5, "B": 0.5})
    assert markov.value_shares() == pytest.approx({"A": 10 / 11, "B": 1 / 11})
    assert markov.expected_value == pytest.approx(330.0 / 8)
    by_value = shapley_values(paths, by_value=True)
    assert by_value.values == pytest.approx({"A": 300.0, "B": 30.0})  # efficiency: the value of all conversions
    conversions, value = summarise(paths).credited(markov.shares(), markov.value_shares())
    assert conversions == pytest.approx({"A": 3.0, "B": 3.0}) and value == pytest.approx({"A": 300.0, "B": 30.0})


@settings(max_examples=60, deadline=None)
@given(paths=st.lists(st.tuples(st.lists(st.sampled_from("ABC"), min_size=1, max_size=4), st.booleans()),
                      min_size=1, max_size=30), worth=st.floats(min_value=0.5, max_value=1e4))
def test_with_every_order_worth_the_same_value_effects_are_conversion_effects(paths, worth):
    markov = markov_removal_effects([(channels, converted, worth if converted else 0.0) for channels, converted in paths])
    assert markov.value_removal_effects == pytest.approx(markov.removal_effects, abs=1e-9)
    assert markov.expected_value == pytest.approx(worth * markov.conversion_probability, rel=1e-9)


@pytest.mark.parametrize("sparse_from", [0, 10_000])
def test_the_sparse_and_the_dense_solve_agree_with_the_independent_one(sparse_from, monkeypatch):
    import random

    from transforms.attribution import _AbsorbingChain

    monkeypatch.setattr(_AbsorbingChain, "SPARSE_FROM", sparse_from)
    rng = random.Random(5)
    paths = [([rng.choice("ABCDE") for _ in range(rng.randint(1, 5))], rng.random() < 0.4, rng.uniform(5, 500))
             for _ in range(300)]
    for order in (1, 3):
        markov = markov_removal_effects(paths, order)
        whole = _value_weighted_solve(paths, order)
        assert markov.expected_value == pytest.approx(whole, rel=1e-9)
        for channel, effect in markov.value_removal_effects.items():
            assert effect == pytest.approx(1.0 - _value_weighted_solve(paths, order, channel) / whole, abs=1e-9)
