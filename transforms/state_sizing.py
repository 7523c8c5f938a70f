"""Cheaper sizing of Beam's state cache entries, applied in every process that runs our DoFns.

Beam 2.77's SDK worker weighs every value it caches (each keyed-state read and write) with objsize, whose default
first lists the globals of every loaded module, per call, so that it can leave them out: about 4 ms a call with
Beam, pandas and Great Expectations loaded, and two thirds of the analytics stage's time (cProfile of
deploy/bench/journeys_rate.py). Beam's own filter already skips modules, types and functions, so the values we
keep in state (pickled bytes, rows of plain values) never reach a module's globals: the same sizes, without the
per-call listing.

A cached bag is weighed again whole each time a bundle adds to it (GlobalCachingStateHandler.extend): a stream's
writer buffers every row between commits in one bag, and weighing it took 6 % of the SDK worker's time at 1,000
events/s. A list longer than SAMPLED_ABOVE is weighed by a sample of its items: a cache weight, not an exact size.
A list of bytes (what our DoFns keep: pickled values) is weighed without objsize, whose setup per call outweighs
the bytes' own sizes by far.
"""
from __future__ import annotations

import sys

import objsize
from apache_beam.runners.worker import statecache


SAMPLED_ABOVE = 1000  # items
SAMPLE = 100  # items weighed of a longer list, evenly spread


def _deep_size(*objs) -> int:
    if len(objs) != 1 or type(objs[0]) is not list:
        return _exact_deep_size(*objs)
    items = objs[0]
    if all(type(item) is bytes for item in items):
        return sys.getsizeof(items) + sum(map(sys.getsizeof, {id(item): item for item in items}.values()))
    if len(items) > SAMPLED_ABOVE:
        sample = items[::len(items) // SAMPLE][:SAMPLE]
        return sys.getsizeof(items) + _exact_deep_size(*sample) * len(items) // len(sample)
    return _exact_deep_size(*objs)


def _exact_deep_size(*objs) -> int:
    return objsize.get_deep_size(*objs, get_size_func=statecache._size_func,
                                 get_referents_func=statecache._get_referents_func,
                                 filter_func=statecache._filter_func, exclude_modules_globals=False)


def use_cheap_state_sizing() -> None:
    statecache.get_deep_size = _deep_size
