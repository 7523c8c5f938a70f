"""Confidence intervals of the data-driven channel shares: a bootstrap over paths.

A replicate resamples the paths by Poisson weights: an aggregated path with c conversions and u nulls draws
Poisson(c) conversions (its value scaled per conversion) and Poisson(u) nulls, which is resampling the individual
paths (the Poisson bootstrap), so a weighted path behaves exactly like its copies. Each replicate is fitted as the
point estimate is (markov_removal_effects, Shapley values, PathSummary.credited) and the intervals are the
replicates' percentiles.

Everything a replicate reads is linear in the paths' weights: the chain's transition counts, the conversions and
value at each state, the conversions by channel set and by multiset. So the paths are indexed once (their states,
transitions, sets) into sparse incidence matrices, and a chunk of replicates' counts come out of one product each; the
state space is the point fit's, a state that no resampled path visits leads nowhere (it is unreachable, so it does
not change the solve). The Shapley value of a game worth(S) = Σ_{T ⊆ S} n_T (conversions by the set of channels
they used) is Σ_{T ∋ c} n_T / |T| (a sum of unanimity games), which a replicate computes exactly for any number of
channels.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from transforms.attribution import START

CHUNK = 50  # replicates drawn and fitted together


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    standard_error: float  # the replicates' standard deviation


@dataclass(frozen=True)
class ChannelIntervals:
    share: Interval  # of the channel's share of the model's values in conversions
    value_share: Interval  # of its share of the values in value
    conversions: Interval  # of the conversions credited to it (PathSummary.credited)
    value: Interval  # of the value credited to it


@dataclass(frozen=True)
class Bootstrap:
    resamples: int
    confidence: float
    paths: float  # the sample size: the paths (converting and not) behind the fit
    models: dict  # "markov_<order>" and "shapley" → channel → ChannelIntervals


@dataclass(frozen=True)
class WeightedPath:
    """A distinct path and how often it went each way: as AggregatedPath (transforms/path_files.py)."""
    channels: tuple
    conversions: float
    value: float
    nulls: float


def bootstrap_shares(paths, markov_orders=(1,), shapley: bool = True, resamples: int = 200, seed: int = 0,
                     confidence: float = 0.95) -> Bootstrap:
    """Percentile intervals and standard errors of each data-driven model's channel shares and credits, over
    `resamples` Poisson replicates of the paths (anything with channels, conversions, value and nulls), seeded."""
    if resamples < 2:
        raise ValueError(f"resamples {resamples}: at least 2")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: between 0 and 1")
    paths = distinct(paths)
    size = math.fsum(p.conversions + p.nulls for p in paths)
    if not paths:
        return Bootstrap(resamples, confidence, size, {})
    # Conversions and nulls from streams of their own, drawn a chunk of replicates at a time: the draws are the
    # same whatever the chunk, and a chunk's arrays (replicates × distinct paths) stay small for a large file.
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2)]
    means = (np.array([p.conversions for p in paths], dtype=float), np.array([p.nulls for p in paths], dtype=float))
    per_conversion = np.array([p.value / p.conversions if p.conversions else 0.0 for p in paths])
    channels = sorted({c for p in paths for c in p.channels})
    fits = {**{f"markov_{order}": _Chain(paths, order, channels) for order in markov_orders},
            **({"shapley": _ShapleySplit(paths, channels)} if shapley else {})}
    credit = _Credit(paths, channels)
    found: dict = {model: [] for model in fits}  # model → per chunk (shares, value shares, conversions, value)
    for first in range(0, resamples, CHUNK):
        count = min(CHUNK, resamples - first)
        conversions, nulls = (stream.poisson(mean, size=(count, len(paths))).astype(float)
                              for stream, mean in zip(streams, means))
        draws = _Draws(conversions, nulls, conversions * per_conversion)
        for model, fit in fits.items():
            shares, value_shares = fit.shares(draws)
            found[model].append((shares, value_shares, credit.credited(draws.conversions, shares),
                                 credit.credited(draws.value, value_shares)))
    models = {model: _intervals(channels, *(np.concatenate(part) for part in zip(*chunks)), confidence)
              for model, chunks in found.items()}
    return Bootstrap(resamples, confidence, size, models)


def distinct(paths) -> list[WeightedPath]:
    """The distinct paths (by their channels, in their order), each with the conversions, value and nulls of all
    its copies, sorted: a replicate then draws the same however the paths were split or ordered, and copies of a
    path draw exactly as the path weighted by their number. Paths with no channel or no weight are left out."""
    totals: dict = {}
    for p in paths:
        if p.channels and (p.conversions or p.nulls):
            total = totals.setdefault(tuple(p.channels), [[], [], []])
            for partials, x in zip(total, (p.conversions, p.value, p.nulls)):
                partials.append(x)
    return [WeightedPath(channels, *(math.fsum(partials) for partials in total))
            for channels, total in sorted(totals.items())]


@dataclass(frozen=True)
class _Draws:
    conversions: np.ndarray  # replicates × paths
    nulls: np.ndarray
    value: np.ndarray


def _incidence(rows: list, columns: list, counts: list, shape: tuple):
    from scipy import sparse

    return sparse.csr_matrix((counts, (rows, columns)), shape=shape, dtype=float)


def _per_replicate(weights: np.ndarray, incidence) -> np.ndarray:
    """replicates × paths weights through a paths × things incidence: replicates × things."""
    return np.asarray((incidence.T @ weights.T).T)


def _shares_of(effects: np.ndarray) -> np.ndarray:
    """replicates × channels values → their shares, as MarkovResult.shares (all 0 when they sum to 0)."""
    total = effects.sum(axis=1, keepdims=True)
    return np.divide(effects, total, out=np.zeros_like(effects), where=total != 0)


# --- Markov: the order-k chain's removal effects in every replicate -------------------------------------------------

class _Chain:
    """The order-k chain of the paths, indexed once for every replicate: its states (START first), the pairs of
    states a step moves between, and how often each path makes each step, leaves each state and ends in it."""

    def __init__(self, paths, order: int, channels: list):
        index = {START: 0}
        walks = []
        for p in paths:
            states = [START] + [tuple(p.channels[max(0, i - order + 1): i + 1]) for i in range(len(p.channels))]
            walks.append([index.setdefault(s, len(index)) for s in states])
        self.n = n = len(index)
        states = sorted(index, key=index.get)
        pairs: dict = {}
        steps, leaves, ends = ([], [], []), ([], [], []), ([], [], [])  # (path, column, count) of each incidence
        for i, walk in enumerate(walks):
            for (here, there), count in Counter(zip(walk, walk[1:])).items():
                _append(steps, i, pairs.setdefault((here, there), len(pairs)), count)
            for here, count in Counter(walk[:-1]).items():
                _append(leaves, i, here, count)  # every step leaves a state; so does the path's end (below)
            _append(leaves, i, walk[-1], 1)
            _append(ends, i, walk[-1], 1)
        self.by_pair = _incidence(*steps, (len(paths), len(pairs)))
        self.leaving, self.ending = _incidence(*leaves, (len(paths), n)), _incidence(*ends, (len(paths), n))
        self.source = np.array([here for here, _ in pairs], dtype=int)
        self.target = np.array([there for _, there in pairs], dtype=int)
        self.keeps = [np.array([s == START or channel not in s for s in states]) for channel in channels]

    def shares(self, draws: _Draws) -> tuple[np.ndarray, np.ndarray]:
        """replicates × channels shares of the removal effects on conversions and on value."""
        moved = _per_replicate(draws.conversions + draws.nulls, self.by_pair)  # replicates × pairs
        left = _per_replicate(draws.conversions + draws.nulls, self.leaving)  # replicates × states
        converted = _per_replicate(draws.conversions, self.ending)
        earned = _per_replicate(draws.value, self.ending)
        # A state no resampled path visits leaves nowhere: its row stays empty (it is unreachable from START).
        safe = np.where(left > 0, left, 1.0)
        probabilities = moved / safe[:, self.source]
        absorbed = np.stack([converted / safe, earned / safe], axis=2)  # replicates × states × (P, value)
        walk = lambda keep: _walk(self.n, self.source, self.target, probabilities, absorbed, keep)
        base = walk(np.ones(self.n, dtype=bool))
        effects = np.zeros((2, len(draws.conversions), len(self.keeps)))
        for j, keep in enumerate(self.keeps):
            without = walk(keep)
            effects[:, :, j] = np.divide(base - without, base, out=np.zeros_like(base), where=base > 0).T
        return _shares_of(effects[0]), _shares_of(effects[1])


def _append(incidence: tuple, row: int, column: int, count: int) -> None:
    incidence[0].append(row)
    incidence[1].append(column)
    incidence[2].append(count)


def _walk(n, source, target, probabilities, absorbed, keep, remaining: float = 1e-13,
          most: int = 2000) -> np.ndarray:
    """replicates × (P(conversion), value a path from START earns) of the chains restricted to `keep`. Not a
    solve per replicate (a sparse LU of an order-3 chain of 1,800 states fills in: about 60 ms each; a stack of
    dense solves is slower still from 150 states): every replicate's walk from START propagated at once, through
    one block-diagonal matrix, accumulating what each step's mass absorbs, until the mass still walking is below
    `remaining` in every replicate (then P(conversion) is exact to that, and the value to that times the largest
    value a state pays). A replicate still walking after `most` steps (a chain that loops a lot) is solved exactly."""
    from scipy import sparse

    replicates = len(probabilities)
    inside = np.flatnonzero(keep[source] & keep[target])
    shift = (np.arange(replicates) * n)[:, None]
    step = sparse.csr_matrix((probabilities[:, inside].ravel(), ((target[inside] + shift).ravel(),
                                                                  (source[inside] + shift).ravel())),
                             shape=(n * replicates, n * replicates))
    pays = absorbed * keep[None, :, None]  # a removed state absorbs nothing: its walks end there
    walking = np.zeros((replicates, n))
    walking[:, 0] = 1.0  # from START
    out = np.zeros((replicates, 2))
    for _ in range(most):
        out += np.einsum("bn,bnk->bk", walking, pays)
        walking = (step @ walking.ravel()).reshape(replicates, n)
        if walking.sum(axis=1).max() < remaining:
            return out
    for b in np.flatnonzero(walking.sum(axis=1) >= remaining):
        out[b] = _solve_exactly(n, source, target, probabilities[b], absorbed[b], keep)
    return out


def _solve_exactly(n, source, target, probabilities, absorbed, keep) -> np.ndarray:
    """One replicate's (P(conversion), value from START) by a sparse LU, restricted to `keep`."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    kept = np.flatnonzero(keep)
    renumber = np.full(n, -1)
    renumber[kept] = np.arange(len(kept))
    inside = keep[source] & keep[target]
    rows = np.concatenate([np.arange(len(kept)), renumber[source[inside]]])
    columns = np.concatenate([np.arange(len(kept)), renumber[target[inside]]])
    data = np.concatenate([np.ones(len(kept)), -probabilities[inside]])
    a = sparse.csc_matrix((data, (rows, columns)), shape=(len(kept), len(kept)))
    return splu(a).solve(np.ascontiguousarray(absorbed[kept]))[0]


# --- Shapley: closed form in every replicate ------------------------------------------------------------------------

class _ShapleySplit:
    """Each set of channels' conversions (value) split equally among its channels: the Shapley values of every
    replicate, in conversions and in value."""

    def __init__(self, paths, channels: list):
        sets: dict = {}
        to_set = ([], [], [])
        for i, p in enumerate(paths):
            _append(to_set, i, sets.setdefault(frozenset(p.channels), len(sets)), 1)
        self.by_set = _incidence(*to_set, (len(paths), len(sets)))
        position = {c: j for j, c in enumerate(channels)}
        self.split = np.zeros((len(sets), len(channels)))
        for used, s in sets.items():
            self.split[s, [position[c] for c in used]] = 1.0 / len(used)

    def shares(self, draws: _Draws) -> tuple[np.ndarray, np.ndarray]:
        values = _per_replicate(draws.conversions, self.by_set) @ self.split
        by_value = _per_replicate(draws.value, self.by_set) @ self.split
        return _shares_of(values), _shares_of(by_value)


# --- credits and intervals --------------------------------------------------------------------------------------------

class _Credit:
    """PathSummary.credited for every replicate: each converting multiset's conversions (value) split among its
    channels by their shares, or by their touches when none of them has a share."""

    def __init__(self, paths, channels: list):
        position = {c: j for j, c in enumerate(channels)}
        multisets: dict = {}
        to_multiset = ([], [], [])
        for i, p in enumerate(paths):
            key = tuple(sorted(Counter(p.channels).items()))
            _append(to_multiset, i, multisets.setdefault(key, len(multisets)), 1)
        self.by_multiset = _incidence(*to_multiset, (len(paths), len(multisets)))
        self.touches = np.zeros((len(multisets), len(channels)))
        for key, m in multisets.items():
            for channel, touches in key:
                self.touches[m, position[channel]] = touches
        self.linear = self.touches / self.touches.sum(axis=1, keepdims=True)

    def credited(self, weights: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """replicates × channels credits of weights (replicates × paths) split by shares (replicates × channels)."""
        counts = _per_replicate(weights, self.by_multiset)  # replicates × multisets
        present = self.touches > 0
        out = np.empty_like(shares)
        for b in range(len(shares)):
            split = present * np.maximum(shares[b], 0.0)
            total = split.sum(axis=1, keepdims=True)
            split = np.divide(split, total, out=self.linear.copy(), where=total > 0)
            out[b] = counts[b] @ split
        return out


def _intervals(channels, shares, value_shares, conversions, value, confidence: float) -> dict:
    """replicates × channels arrays → each channel's percentile intervals and standard errors."""
    tail = (1 - confidence) / 2

    def interval(replicates: np.ndarray, j: int) -> Interval:
        low, high = np.quantile(replicates[:, j], [tail, 1 - tail])
        return Interval(float(low), float(high), float(np.std(replicates[:, j], ddof=1)))

    return {c: ChannelIntervals(interval(shares, j), interval(value_shares, j), interval(conversions, j),
                                interval(value, j)) for j, c in enumerate(channels)}
