"""The local cluster's SDK worker boot sends a bundle's keyed-state writes together and then waits for them, where
Beam waits for each state's before it sends the next: the same requests, in the same order."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

from apache_beam.coders import BytesCoder
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import bundle_processor

BOOT = Path(__file__).resolve().parents[1] / "deploy" / "flink" / "sdk_worker_boot.py"


def _boot():
    spec = importlib.util.spec_from_file_location("sdk_worker_boot", BOOT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Handler:
    """A state handler that logs each request as sent and each wait for its answer."""

    def __init__(self):
        self.log = []

    def _future(self, what):
        self.log.append(("send", *what))
        return SimpleNamespace(get=lambda: self.log.append(("wait", *what)))

    def clear(self, state_key):
        return self._future(("clear", state_key.bag_user_state.key))

    def extend(self, state_key, coder, elements):
        return self._future(("extend", state_key.bag_user_state.key, tuple(elements)))


def _states(handler):
    def bag(key: bytes):
        state_key = beam_fn_api_pb2.StateKey(bag_user_state=beam_fn_api_pb2.StateKey.BagUserState(key=key))
        return bundle_processor.SynchronousBagRuntimeState(handler, state_key, BytesCoder())

    value = bundle_processor.ReadModifyWriteRuntimeState(bag(b"customer-1"))
    value.write(b"journey")
    added = bag(b"device-7")
    added.add(b"touch-1")
    added.add(b"touch-2")
    untouched = bag(b"order-3")
    return SimpleNamespace(_all_states={"a": value, "b": added, "c": untouched})


def test_a_bundles_state_writes_all_go_out_before_the_commit_waits_for_any():
    handler = _Handler()
    _boot()._commit_user_state(_states(handler))
    sent = [entry for entry in handler.log if entry[0] == "send"]
    assert handler.log[:len(sent)] == sent  # nothing waited on before the last request went out
    assert sent == [("send", "clear", b"customer-1"), ("send", "extend", b"customer-1", (b"journey",)),
                    ("send", "extend", b"device-7", (b"touch-1", b"touch-2"))]
    # as Beam's own commit: each state's last request is the one waited for
    assert [entry[1:] for entry in handler.log[len(sent):]] == [("extend", b"customer-1", (b"journey",)),
                                                                 ("extend", b"device-7", (b"touch-1", b"touch-2"))]


def test_beams_own_commit_sends_the_same_requests():
    ours, beams = _Handler(), _Handler()
    _boot()._commit_user_state(_states(ours))
    bundle_processor.FnApiUserStateContext.commit(_states(beams))
    assert sorted(e for e in ours.log if e[0] == "send") == sorted(e for e in beams.log if e[0] == "send")
    assert beams.log[2] == ("wait", "extend", b"customer-1", (b"journey",))  # Beam waits before the next state's


def test_the_boot_reports_each_state_caches_hit_ratio(monkeypatch, capsys):
    """A keyed-state read the cache misses is a round trip to the TaskManager: the ratio is worth a log line."""
    from apache_beam.runners.worker import statecache

    monkeypatch.setattr(statecache.StateCache, "__init__", statecache.StateCache.__init__)  # undone after the test
    monkeypatch.setenv("WORKER_ID", "w1")
    report = _boot()._report_state_cache(every_s=3600)
    cache = statecache.StateCache(1 << 20)
    cache.get("k", lambda key: [1])
    cache.get("k", lambda key: [1])
    report()
    assert "journeys sdk worker w1: state cache used/max 0/1 MB, hit 50.00%, lookups 2" in capsys.readouterr().err
