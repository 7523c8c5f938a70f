"""The bootstrap over paths (transforms/bootstrap.py): a replicate's fit is the point fit on its weights, dropped
states are handled, copies draw as weights, and the intervals cover the generating chain's shares."""
import random

import numpy as np
import pytest

from transforms.attribution import CONVERSION, NULL, START, PathSummary, markov_removal_effects, shapley_values
from transforms.bootstrap import (WeightedPath, _Chain, _Credit, _Draws, _ShapleySplit, _walk, bootstrap_shares,
                                  distinct)
from transforms.path_files import read_paths, summary_of

# Loops (A > A, B > A > B), a shared prefix, a path that never converts and one that only does.
FILE = """A > B;3;30;2
B;2;10;5
C > A;1;7;1
A > A > C;2;5;3
B > A > B > C;1;40;4
D > C;0;0;6
C;4;4;0
"""


def _observed(paths) -> _Draws:
    """The draws that reproduce the paths themselves: every weight as observed."""
    row = lambda xs: np.array([list(xs)], dtype=float)
    return _Draws(row(p.conversions for p in paths), row(p.nulls for p in paths), row(p.value for p in paths))


def _channels(paths):
    return sorted({c for p in paths for c in p.channels})


@pytest.mark.parametrize("order", [1, 2, 3])
def test_a_replicate_with_the_observed_weights_is_the_point_fit(order):
    paths = distinct(read_paths(FILE))
    channels = _channels(paths)
    shares, value_shares = _Chain(paths, order, channels).shares(_observed(paths))
    summary = summary_of(paths, order)
    markov = markov_removal_effects(summary)
    assert shares[0] == pytest.approx([markov.shares()[c] for c in channels], abs=1e-12)
    assert value_shares[0] == pytest.approx([markov.value_shares()[c] for c in channels], abs=1e-12)
    conversions, value = summary.credited(markov.shares(), markov.value_shares())
    credit = _Credit(paths, channels)
    assert credit.credited(_observed(paths).conversions, shares)[0] == pytest.approx([conversions[c] for c in channels])
    assert credit.credited(_observed(paths).value, value_shares)[0] == pytest.approx([value[c] for c in channels])


def test_a_replicates_closed_form_shapley_values_are_the_exact_ones():
    paths = distinct(read_paths(FILE))
    channels = _channels(paths)
    shares, value_shares = _ShapleySplit(paths, channels).shares(_observed(paths))
    summary = summary_of(paths, 1)
    assert shares[0] == pytest.approx([shapley_values(summary).shares()[c] for c in channels], abs=1e-12)
    assert value_shares[0] == pytest.approx([shapley_values(summary, by_value=True).shares()[c] for c in channels],
                                            abs=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_a_path_drawn_zero_times_is_as_if_it_were_not_there(order):
    # B > A > B > C drawn 0 times: its states (B, A), (A, B, C)... are visited by no path of the replicate.
    paths = distinct(read_paths(FILE))
    gone = next(i for i, p in enumerate(paths) if p.channels == ("B", "A", "B", "C"))
    draws = _observed(paths)
    for weights in (draws.conversions, draws.nulls, draws.value):
        weights[0, gone] = 0.0
    shares, value_shares = _Chain(paths, order, _channels(paths)).shares(draws)
    markov = markov_removal_effects(summary_of(paths[:gone] + paths[gone + 1:], order))
    assert shares[0] == pytest.approx([markov.shares().get(c, 0.0) for c in _channels(paths)], abs=1e-12)
    assert value_shares[0] == pytest.approx([markov.value_shares().get(c, 0.0) for c in _channels(paths)], abs=1e-12)


def test_a_chain_that_loops_a_lot_is_solved_exactly_after_the_walk():
    # START → A; A → A with probability 0.99: a walk of 2000 steps still holds 0.99^2000 of the mass.
    summary = PathSummary()
    summary.transitions[START]["A"] = 100
    summary.transitions["A"].update({"A": 9900, CONVERSION: 50, NULL: 50})
    summary.conversion_value["A"] = [500.0]
    summary.channels.add("A")
    exact = markov_removal_effects(summary).conversion_probability
    source, target = np.array([0, 1]), np.array([1, 1])
    probabilities = np.array([[1.0, 0.99]])
    absorbed = np.array([[[0.0, 0.0], [0.005, 0.05]]])
    walked = _walk(2, source, target, probabilities, absorbed, np.ones(2, dtype=bool), most=50)
    assert walked[0] == pytest.approx([exact, 5.0], rel=1e-12)


def test_copies_draw_exactly_as_their_weights_and_the_file_order_does_not_matter():
    weighted = read_paths("A > B;3;30;2\nB;2;10;5\nC > A;1;7;1\n")
    copies = read_paths("C > A;1;7;1\n" + "A > B;1;10;0\n" * 3 + "B;0;0;1\n" * 5 + "A > B;0;0;1\n" * 2
                        + "B;1;5;0\n" * 2)
    assert bootstrap_shares(weighted, (1, 2), resamples=50) == bootstrap_shares(copies, (1, 2), resamples=50)


def test_the_draws_are_the_same_whatever_the_chunk_of_replicates(monkeypatch):
    import transforms.bootstrap

    def flat(found):
        return {(model, channel, what, end): getattr(getattr(intervals, what), end)
                for model, channels in found.models.items() for channel, intervals in channels.items()
                for what in ("share", "value_share", "conversions", "value")
                for end in ("low", "high", "standard_error")}

    found = flat(bootstrap_shares(read_paths(FILE), (1, 2), resamples=60, seed=5))
    monkeypatch.setattr(transforms.bootstrap, "CHUNK", 7)
    # the same draws; the walks stop when a chunk's slowest replicate is done: equal to the walk's tolerance
    assert flat(bootstrap_shares(read_paths(FILE), (1, 2), resamples=60, seed=5)) == pytest.approx(found, abs=1e-10)


def test_seeded_and_each_interval_holds_its_point():
    paths = read_paths(FILE)
    found = bootstrap_shares(paths, (1, 2, 3), resamples=300, seed=7)
    assert found == bootstrap_shares(paths, (1, 2, 3), resamples=300, seed=7)
    assert found != bootstrap_shares(paths, (1, 2, 3), resamples=300, seed=8)
    assert found.paths == 34 and found.resamples == 300 and set(found.models) == {"markov_1", "markov_2", "markov_3",
                                                                                   "shapley"}
    for order in (1, 2, 3):
        point = markov_removal_effects(summary_of(paths, order)).shares()
        for channel, intervals in found.models[f"markov_{order}"].items():
            assert intervals.share.low <= point[channel] <= intervals.share.high
            assert 0 <= intervals.share.standard_error and 0 <= intervals.share.low <= intervals.share.high <= 1


def test_weights_times_k_narrow_the_intervals_by_about_root_k():
    paths = read_paths(FILE)
    times = [WeightedPath(p.channels, 16 * p.conversions, 16 * p.value, 16 * p.nulls) for p in paths]
    once, more = (bootstrap_shares(p, (1,), resamples=400, seed=3).models for p in (paths, times))
    for model in once:
        for channel in once[model]:
            for what, scale in (("share", 1), ("conversions", 16)):  # credits are 16 times more: relative to them
                a, b = getattr(once[model][channel], what), getattr(more[model][channel], what)
                if a.standard_error == 0:  # D: on no converting path, it never earns
                    assert channel == "D" and b.standard_error == 0
                    continue
                assert 3.2 < scale * a.standard_error / b.standard_error < 5.0, (model, channel, what)
                assert 2.8 < scale * (a.high - a.low) / (b.high - b.low) < 5.5, (model, channel, what)


def _simulated(rng: random.Random, paths: int) -> list[WeightedPath]:
    """Paths of a first-order chain: START → A 0.5, B 0.3, C 0.2; from each channel a next channel or the end."""
    start = (("A", "B", "C"), (0.5, 0.3, 0.2))
    moves = {"A": (("B", "C", CONVERSION, NULL), (0.3, 0.2, 0.1, 0.4)),
             "B": (("A", "C", CONVERSION, NULL), (0.2, 0.3, 0.2, 0.3)),
             "C": (("A", "B", CONVERSION, NULL), (0.1, 0.1, 0.3, 0.5))}
    drawn = []
    for _ in range(paths):
        channels = [rng.choices(*start)[0]]
        while (step := rng.choices(*moves[channels[-1]])[0]) not in (CONVERSION, NULL):
            channels.append(step)
        converted = step == CONVERSION
        drawn.append(WeightedPath(tuple(channels), float(converted), 10.0 * converted, float(not converted)))
    return drawn, start, moves


def test_the_intervals_cover_the_generating_chains_shares():
    rng = random.Random(11)
    _, start, moves = _simulated(rng, 0)
    truth = PathSummary()  # the generating chain itself, in counts of a billion
    for here, (targets, probabilities) in ((START, start), *moves.items()):
        truth.transitions[here].update({t: round(p * 1e9) for t, p in zip(targets, probabilities)})
    truth.channels.update(moves)
    shares = markov_removal_effects(truth).shares()
    covered = checked = 0
    for world in range(40):
        found = bootstrap_shares(_simulated(rng, 400)[0], (1,), shapley=False, resamples=200, seed=world)
        for channel, intervals in found.models["markov_1"].items():
            checked += 1
            covered += intervals.share.low <= shares[channel] <= intervals.share.high
    assert checked == 120 and covered >= 104, covered  # 95 % nominal: 114 expected; 104 is 3 binomial sd below


def test_a_summary_keeps_at_most_so_many_distinct_paths_and_then_none_so_its_fit_has_no_intervals(monkeypatch):
    from transforms import attribution

    monkeypatch.setattr(attribution, "MAX_DISTINCT_PATHS", 2)
    kept = PathSummary().add(["Email"], True, 10.0).add(["Email"], False).add(["Direct"], False)
    assert [(p.channels, p.conversions, p.nulls) for p in kept.distinct_paths()] == [
        (("Direct",), 0, 1), (("Email",), 1, 1)]
    full = PathSummary().add(["Email"], True, 10.0).add(["Direct"], False).add(["Display"], False)
    assert full.distinct_paths() is None and full.paths == 3  # the fit's own counts go on
    assert PathSummary().add(["Email"], True, 1.0).merge(full).distinct_paths() is None
    assert kept.merge(PathSummary()).distinct_paths() is not None
