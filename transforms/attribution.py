"""Attribution models as pure functions: which touches of a customer's path earn an order, and how much.

Heuristic models work on one path and return one credit per touch (summing to 1). Data-driven models (Markov
chain removal effect, Shapley) learn channel values from many paths, converting and not, and then split each
order among the channels on its path in proportion to those values.

A path is a list of Touch, oldest first. `prepare_path` applies the lookback window (days and steps), a path
transform, and channel include/exclude; an empty path is credited to `no_touch_channel` (Direct).
"""
from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

HEURISTIC_MODELS = ("first_touch", "last_touch", "last_non_direct", "linear", "position_based", "time_decay")
PATH_TRANSFORMS = ("unique", "exposure", "first", "frequency", "remove_if_last_and_not_all")
CONVERSION, NULL, START = "(conversion)", "(null)", "(start)"


@dataclass(frozen=True)
class Touch:
    time: dt.datetime
    channel: str
    touch_id: str | None = None  # None for the synthetic no-touch step


@dataclass(frozen=True)
class AttributionConfig:
    lookback_days: float = 30.0
    lookback_steps: int | None = None  # keep at most this many touches, the latest
    path_transform: str = "unique"
    include_channels: frozenset | None = None  # None: all
    exclude_channels: frozenset = frozenset()
    no_touch_channel: str = "Direct"
    direct_channel: str = "Direct"
    position_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)  # first, middle (shared), last
    half_life_days: float = 7.0
    markov_order: int = 1
    shapley_exact_max_channels: int = 12
    shapley_samples: int = 2000
    seed: int = 0  # of the sampled Shapley values and of the bootstrap
    # Bootstrap replicates of a data-driven fit's paths for the intervals of its shares (transforms/bootstrap.py);
    # 0: none. The pipeline refits a window at each late firing of a stream, so they are few: 100 replicates put
    # a 2.5 % percentile between the 2nd and 3rd smallest of them, rough but seeded and cheap.
    bootstrap_resamples: int = 100
    confidence: float = 0.95


def prepare_path(touches: list[Touch], conversion_time: dt.datetime, config: AttributionConfig) -> list[Touch]:
    """The touches that may earn this conversion: in the lookback window, transformed, filtered; never empty."""
    since = conversion_time - dt.timedelta(days=config.lookback_days)
    path = sorted((t for t in touches if since <= t.time <= conversion_time), key=lambda t: (t.time, t.touch_id or ""))
    path = [t for t in path if t.channel not in config.exclude_channels
            and (config.include_channels is None or t.channel in config.include_channels)]
    if config.lookback_steps is not None:
        path = path[-config.lookback_steps:] if config.lookback_steps > 0 else []
    path = transform_path(path, config.path_transform, config.direct_channel)
    return path or [Touch(conversion_time, config.no_touch_channel)]


def transform_path(path: list[Touch], how: str, direct: str = "Direct") -> list[Touch]:
    if how == "unique":  # every touch as it happened
        return list(path)
    if how == "exposure":  # consecutive repeats of a channel collapse into their first touch
        return [t for i, t in enumerate(path) if i == 0 or path[i - 1].channel != t.channel]
    if how in ("first", "frequency"):  # each channel once, at its first touch (the models use no counts)
        seen = set()
        return [t for t in path if not (t.channel in seen or seen.add(t.channel))]
    if how == "remove_if_last_and_not_all":  # drop trailing Direct touches unless the path is only Direct
        if all(t.channel == direct for t in path):
            return list(path)
        end = len(path)
        while end and path[end - 1].channel == direct:
            end -= 1
        return path[:end]
    raise ValueError(f"path transform {how!r}: one of {', '.join(PATH_TRANSFORMS)}")


# --- heuristic models: one path → one credit per touch ---------------------------------------------------------

def heuristic_credits(model: str, path: list[Touch], conversion_time: dt.datetime,
                      config: AttributionConfig = AttributionConfig()) -> list[float]:
    n = len(path)
    if n == 0:
        raise ValueError("a prepared path has at least one touch")
    if model == "first_touch":
        return [1.0] + [0.0] * (n - 1)
    if model == "last_touch":
        return [0.0] * (n - 1) + [1.0]
    if model == "last_non_direct":
        index = max((i for i, t in enumerate(path) if t.channel != config.direct_channel), default=n - 1)
        return [1.0 if i == index else 0.0 for i in range(n)]
    if model == "linear":
        return [1.0 / n] * n
    if model == "position_based":
        first, middle, last = config.position_weights
        if n == 1:
            return [1.0]
        if n == 2:
            return [first / (first + last), last / (first + last)]
        return [first] + [middle / (n - 2)] * (n - 2) + [last]
    if model == "time_decay":
        ages = [(conversion_time - t.time).total_seconds() / 86400 for t in path]
        weights = [2.0 ** (-age / config.half_life_days) for age in ages]
        total = sum(weights)
        return [w / total for w in weights]
    raise ValueError(f"model {model!r}: one of {', '.join(HEURISTIC_MODELS)}")


# --- What the data-driven models read of many paths ---------------------------------------------------------------

MAX_DISTINCT_PATHS = 50_000  # the distinct paths a PathSummary keeps for a bootstrap at most


@dataclass
class PathSummary:
    """Everything the data-driven models and their credits read of a set of (channels, converted, value) paths, in
    a size bounded by the channels and the distinct paths, not by the paths' number: the order-k chain's transition
    counts, conversions by the set of channels they used, and the converting paths' count and value by their
    channels' multiset, and the distinct paths with their counts and value (what a bootstrap of the fit
    resamples). Summaries of parts merge into the summary of the whole, so a runner can build it where the paths
    are and combine the parts. Counts are integers and values exact float sums: a summary and every result from it
    are the same however the paths were split or ordered."""
    order: int = 1
    paths: int = 0
    identity: int = 0  # a checksum of the paths' identities, summed: a revision's low bits (see `revision`)
    transitions: dict = field(default_factory=lambda: defaultdict(Counter))
    conversions_by_set: Counter = field(default_factory=Counter)
    channels: set = field(default_factory=set)
    converting: dict = field(default_factory=dict)  # sorted ((channel, touches), ...) → [paths, value partials]
    # the chain's last state before CONVERSION → the value partials of the paths that converted from it
    conversion_value: dict = field(default_factory=dict)
    # The distinct paths, channels (oldest first) → [conversions, value partials, nulls]: what a bootstrap
    # resamples (transforms/bootstrap.py), as the fit happens where the paths have already been summarised. None
    # once there are more than MAX_DISTINCT_PATHS: they grow with the paths (about one per ten events in generated
    # worlds), and the summary must stay bounded whatever the history (a window's fit then has no intervals).
    distinct: dict | None = field(default_factory=dict)

    def add(self, channels, converted: bool, value: float = 0.0, weight: int = 1, identity: int = 0) -> "PathSummary":
        """Adds `weight` paths with these channels (oldest first), outcome and summed value."""
        order = self.order
        self.paths += weight
        self.identity = (self.identity + identity) % 2 ** 32
        self.channels.update(channels)
        states = [START] + [tuple(channels[max(0, i - order + 1): i + 1]) for i in range(len(channels))]
        for here, there in zip(states, states[1:]):
            self.transitions[here][there] += weight
        self.transitions[states[-1]][CONVERSION if converted else NULL] += weight
        self._count_distinct(tuple(channels), *((weight, 0, (value,)) if converted else (0, weight, ())))
        if converted:
            _add_exactly(self.conversion_value.setdefault(states[-1], []), value)
            if channels:
                self.conversions_by_set[frozenset(channels)] += weight
            group = self.converting.setdefault(tuple(sorted(Counter(channels).items())), [0, []])
            group[0] += weight
            _add_exactly(group[1], value)
        return self

    def merge(self, other: "PathSummary") -> "PathSummary":
        self.paths += other.paths
        self.identity = (self.identity + other.identity) % 2 ** 32
        self.channels |= other.channels
        for state, targets in other.transitions.items():
            self.transitions[state].update(targets)
        self.conversions_by_set.update(other.conversions_by_set)
        for multiset, (count, partials) in other.converting.items():
            group = self.converting.setdefault(multiset, [0, []])
            group[0] += count
            for partial in partials:
                _add_exactly(group[1], partial)
        for state, partials in other.conversion_value.items():
            mine = self.conversion_value.setdefault(state, [])
            for partial in partials:
                _add_exactly(mine, partial)
        if other.distinct is None:
            self.distinct = None
        for channels, (conversions, partials, nulls) in (other.distinct or {}).items():
            self._count_distinct(channels, conversions, nulls, partials)
        return self

    def _count_distinct(self, channels: tuple, conversions, nulls, values) -> None:
        """Adds to the counts of these channels' distinct path; once there would be more than MAX_DISTINCT_PATHS
        (or after a merge with a summary that stopped), the summary keeps none."""
        if self.distinct is None:
            return
        seen = self.distinct.get(channels)
        if seen is None:
            if len(self.distinct) >= MAX_DISTINCT_PATHS:
                self.distinct = None
                return
            seen = self.distinct[channels] = [0, [], 0]
        seen[0] += conversions
        seen[2] += nulls
        for value in values:
            _add_exactly(seen[1], value)

    def distinct_paths(self) -> list | None:
        """The distinct paths as transforms.bootstrap resamples them (each with its conversions, value and nulls),
        sorted; None when there were too many to keep."""
        from transforms.bootstrap import WeightedPath

        if self.distinct is None:
            return None
        return [WeightedPath(channels, conversions, math.fsum(partials), nulls)
                for channels, (conversions, partials, nulls) in sorted(self.distinct.items())]

    def revision(self) -> int:
        """The path count in the high bits, so a summary of more paths is newer, and the identities' checksum in
        the low 32."""
        return self.paths << 32 | self.identity

    def credited(self, shares: dict, value_shares: dict | None = None) -> tuple[dict, dict]:
        """Conversions and value each channel earns when every converting path is split by data_driven_credits:
        its conversions by `shares`, its value by `value_shares` (by `shares` when None)."""
        conversions, value = defaultdict(float), defaultdict(float)
        for multiset in sorted(self.converting):
            count, partials = self.converting[multiset]
            total = math.fsum(partials)
            touches = dict(multiset)
            for channel, credit in channel_credits(touches, shares).items():
                conversions[channel] += credit * count
            for channel, credit in channel_credits(touches, shares if value_shares is None else value_shares).items():
                value[channel] += credit * total
        return conversions, value

    def value_by_set(self) -> dict:
        """The converting paths' value by the set of channels they used (paths with no channel left out, as
        conversions_by_set leaves them)."""
        by_set = defaultdict(list)
        for multiset, (_, partials) in self.converting.items():
            if multiset:
                for partial in partials:
                    _add_exactly(by_set[frozenset(channel for channel, _ in multiset)], partial)
        return {used: math.fsum(partials) for used, partials in by_set.items()}


def summarise(paths, order: int = 1) -> PathSummary:
    """(channels, converted) or (channels, converted, value) or (channels, converted, value, weight) paths → their
    PathSummary. A weight counts the path that many times."""
    summary = PathSummary(order)
    for path in paths:
        summary.add(*path)
    return summary


def _add_exactly(partials: list, x: float) -> None:
    """Adds x to a sum kept as non-overlapping partials (Shewchuk's algorithm, as math.fsum): their fsum is the
    exactly rounded total, whatever order the terms came in."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        high = x + y
        low = y - (high - x)
        if low:
            partials[i] = low
            i += 1
        x = high
    partials[i:] = [x]


# --- Markov chain removal effect ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MarkovResult:
    conversion_probability: float
    removal_effects: dict  # channel → 1 - P(conversion without it) / P(conversion)
    expected_value: float = 0.0  # value a path from START earns on average: conversions weighted by their value
    value_removal_effects: dict = field(default_factory=dict)  # channel → 1 - that value without it / with it

    def shares(self) -> dict:
        return _shares(self.removal_effects)

    def value_shares(self) -> dict:
        return _shares(self.value_removal_effects)


def _shares(values: dict) -> dict:
    total = sum(values.values())
    return {c: (v / total if total else 0.0) for c, v in values.items()}


def markov_removal_effects(paths, order: int = 1) -> MarkovResult:
    """Exact removal effects of an order-k Markov chain fitted to paths (as `summarise` takes them), or to their
    PathSummary (whose own order counts then): on conversions, and on value, where each transition into
    CONVERSION is weighted by the value of the paths that took it (as ChannelAttribution's value removal effects,
    solved exactly instead of simulated)."""
    summary = paths if isinstance(paths, PathSummary) else summarise(paths, order)
    chain = _AbsorbingChain(summary)
    probability, value = chain.solve(None)
    conversion, by_value = {}, {}
    for channel in sorted(summary.channels):
        without, value_without = chain.solve(channel)
        conversion[channel] = 1.0 - without / probability if probability > 0 else 0.0
        by_value[channel] = 1.0 - value_without / value if value > 0 else 0.0
    return MarkovResult(probability, conversion, value, by_value)


class _AbsorbingChain:
    """A summary's chain over its transient states (START first, then in order), built once: (I - Q) and the two
    absorption columns, P(CONVERSION) and the value each transition into it pays (the mean value of the paths
    that took it). Removing a channel keeps the states without it: a removed channel's states lead nowhere."""
    SPARSE_FROM = 300  # states: an order-2 or -3 chain has thousands, mostly without a transition between them

    def __init__(self, summary: PathSummary):
        transitions = summary.transitions
        self.states = sorted(transitions, key=lambda s: (s != START, s))
        index = {s: i for i, s in enumerate(self.states)}
        rows, columns, probabilities = [], [], []
        self.r = np.zeros((len(self.states), 2))
        for i, state in enumerate(self.states):
            counts = transitions[state]
            total = sum(counts.values())
            for target in sorted(counts, key=str):
                if target == CONVERSION:
                    self.r[i] = (counts[target] / total, math.fsum(summary.conversion_value.get(state, ())) / total)
                elif target != NULL:
                    rows.append(i)
                    columns.append(index[target])
                    probabilities.append(counts[target] / total)
        n = len(self.states)
        if n >= self.SPARSE_FROM:
            from scipy import sparse

            q = sparse.csr_matrix((probabilities, (rows, columns)), shape=(n, n))
            self.a = (sparse.identity(n, format="csr") - q).tocsr()
        else:
            q = np.zeros((n, n))
            np.add.at(q, (rows, columns), probabilities)
            self.a = np.eye(n) - q

    def solve(self, removed: str | None) -> tuple[float, float]:
        """(P(CONVERSION), the value a path from START earns on average), without `removed`'s states."""
        if removed is None:
            a, r = self.a, self.r
        else:
            keep = np.array([s == START or removed not in s for s in self.states])
            a, r = self.a[keep][:, keep], self.r[keep]
        if isinstance(a, np.ndarray):
            solution = np.linalg.solve(a, r)
        else:
            from scipy.sparse.linalg import splu

            solution = splu(a.tocsc()).solve(r)
        return float(solution[0, 0]), float(solution[0, 1])


# --- Shapley values -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShapleyResult:
    values: dict  # channel → Shapley value (in conversions, or value); they sum to v(all channels)
    standard_errors: dict  # 0 when exact
    exact: bool

    def shares(self) -> dict:
        return _shares(self.values)


def shapley_values(paths, exact_max_channels: int = 12, samples: int = 2000, seed: int = 0,
                   by_value: bool = False) -> ShapleyResult:
    """Shapley values of channels where a coalition S is worth the conversions (`by_value`: their value) of paths
    using only channels in S; paths as `summarise` takes them, or their PathSummary.

    Exact over all coalitions up to `exact_max_channels` channels; beyond, permutation sampling with each
    value's standard error reported.
    """
    summary = paths if isinstance(paths, PathSummary) else summarise(paths)
    conversions_by_set = summary.value_by_set() if by_value else summary.conversions_by_set
    channels = sorted(summary.channels)

    worths: dict = {}  # an exact solve asks for each coalition's worth once per channel in or out of it

    def worth(coalition: frozenset) -> float:
        if coalition not in worths:
            # fsum: a value sum (by_value) is then the same in whatever order the summary holds the sets
            worths[coalition] = math.fsum(n for used, n in conversions_by_set.items() if used <= coalition)
        return worths[coalition]

    n = len(channels)
    if n <= exact_max_channels:
        values = {}
        for channel in channels:
            others = [c for c in channels if c != channel]
            total = 0.0
            for size in range(n):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                for subset in itertools.combinations(others, size):
                    coalition = frozenset(subset)
                    total += weight * (worth(coalition | {channel}) - worth(coalition))
            values[channel] = total
        return ShapleyResult(values, {c: 0.0 for c in channels}, exact=True)
    rng = random.Random(seed)
    draws: dict = {c: [] for c in channels}
    for _ in range(samples):
        order = channels[:]
        rng.shuffle(order)
        coalition: frozenset = frozenset()
        before = 0.0
        for channel in order:
            coalition = coalition | {channel}
            after = worth(coalition)
            draws[channel].append(after - before)
            before = after
    values = {c: sum(d) / len(d) for c, d in draws.items()}
    errors = {c: (np.std(d, ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0) for c, d in draws.items()}
    return ShapleyResult(values, {c: float(e) for c, e in errors.items()}, exact=False)


def channel_credits(touches: dict, channel_values: dict) -> dict:
    """One order's credit per channel on its path ({channel: touches}): in proportion to the channels' learned
    values, or by their touches (linear) when no channel on the path has value."""
    weights = {c: max(channel_values.get(c, 0.0), 0.0) for c in touches}
    total = sum(weights.values())
    if total <= 0:
        length = sum(touches.values())
        return {c: n / length for c, n in touches.items()}
    return {c: weights[c] / total for c in touches}


def data_driven_credits(path: list[Touch], channel_values: dict) -> list[float]:
    """One order's credit per touch: its channels share in proportion to their learned values, each channel's
    share split evenly over its touches. Falls back to linear when no channel on the path has value."""
    counts = Counter(t.channel for t in path)
    credits = channel_credits(counts, channel_values)
    return [credits[t.channel] / counts[t.channel] for t in path]
