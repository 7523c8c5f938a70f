"""Beam's state cache weighs our state values the same with the cheaper sizing (a long list by a sample of its
items), and importing our transforms turns it on in a process that has Beam (a worker)."""
import datetime as dt
import pickle
from decimal import Decimal

from apache_beam.runners.worker import statecache

from transforms.state_sizing import SAMPLED_ABOVE, _deep_size

ROW = {"order_id": "o1", "credit": 0.5, "revenue_credit": Decimal("12.34"), "when": dt.datetime(2026, 5, 1),
       "touch_id": None, "path": ("Email", "Direct")}
VALUES = [b"x" * 1000, [pickle.dumps(ROW)] * 3, [pickle.dumps(ROW), b"", b"y" * 70000], [], (3, {("o1", "linear"): ROW}), ROW, 1.5, None]


def _beam_default(*objs):
    import objsize

    return objsize.get_deep_size(*objs, get_size_func=statecache._size_func,
                                 get_referents_func=statecache._get_referents_func, filter_func=statecache._filter_func)


def test_a_process_with_beam_that_imports_our_transforms_sizes_cheaply_and_one_without_stays_free_of_beam():
    import subprocess
    import sys

    worker = ("import apache_beam, transforms; from apache_beam.runners.worker import statecache; "
              "from transforms.state_sizing import _deep_size; assert statecache.get_deep_size is _deep_size")
    command = "import sys, transforms, pipelines.cli; assert 'apache_beam' not in sys.modules, 'Beam imported'"
    for code in (worker, command):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    assert statecache.get_deep_size is _deep_size  # this process: tests/conftest.py


def test_the_cheaper_sizing_weighs_our_state_values_as_beam_does():
    for value in VALUES:
        assert _deep_size(value) == _beam_default(value), value



def test_a_long_list_is_weighed_by_a_sample_of_its_items():
    rows = [(("order_attribution", (i,)), {**ROW, "order_id": f"o{i}", "credit": i / 7}) for i in range(5 * SAMPLED_ABOVE)]
    exact = _beam_default(rows)
    assert abs(_deep_size(rows) - exact) / exact < 0.05
    short = rows[:SAMPLED_ABOVE]
    assert _deep_size(short) == _beam_default(short)
