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


class _Runner:
    """The runner's side of keyed state: GETs answered from `stored` ({key: value}), each one logged."""

    def __init__(self, stored: dict):
        from apache_beam.coders import PickleCoder

        self.coder = PickleCoder().get_impl()
        self.stored = stored
        self.gets = []
        self._exception = None

    def process_instruction_id(self, bundle_id):
        import contextlib

        return contextlib.nullcontext()

    def _encoded(self, state_key) -> bytes:
        from apache_beam.coders import coder_impl

        key = state_key.bag_user_state.key
        out = coder_impl.create_OutputStream()
        if key in self.stored:
            self.coder.encode_to_stream(self.stored[key], out, True)
        return out.get()

    def _request(self, request):
        from apache_beam.runners.worker.sdk_worker import _Future

        self.gets.append(request.state_key.bag_user_state.key)
        future = _Future()
        future.set(beam_fn_api_pb2.StateResponse(get=beam_fn_api_pb2.StateGetResponse(
            data=self._encoded(request.state_key))))
        return future

    def get_raw(self, state_key, continuation_token=None):
        self.gets.append(state_key.bag_user_state.key)
        return self._encoded(state_key), b""


def test_a_chunks_keyed_state_is_asked_for_before_its_first_element_is_processed():
    """One GET per key and cell the cache lacks, sent together; the reads then find them, decoded as Beam would."""
    from apache_beam.coders import PickleCoder, StrUtf8Coder
    from apache_beam.coders.coders import GlobalWindowCoder
    from apache_beam.runners.worker import statecache
    from apache_beam.runners.worker.sdk_worker import GlobalCachingStateHandler
    from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.windowed_value import WindowedValue

    key = lambda k: StrUtf8Coder().encode_nested(k)
    runner = _Runner({key("A"): (3, "a"), key("B"): (1, "b")})
    handler = GlobalCachingStateHandler(statecache.StateCache(1 << 20), runner)
    spec = ReadModifyWriteStateSpec("last", PickleCoder())
    context = bundle_processor.FnApiUserStateContext(handler, "t1", StrUtf8Coder(), GlobalWindowCoder())
    chunk = [WindowedValue((k, None), 0, [GlobalWindow()]) for k in ("A", "B", "A", "C")]
    token = beam_fn_api_pb2.ProcessBundleRequest.CacheToken(
        user_state=beam_fn_api_pb2.ProcessBundleRequest.CacheToken.UserState(), token=b"t")
    boot = _boot()
    with handler.process_instruction_id("bundle-1", [token]):
        boot._prefetch(context, [spec], chunk)
        assert runner.gets == [key("A"), key("B"), key("C")]
        assert [context.get_state(spec, k, GlobalWindow()).read() for k in ("A", "B", "C")] == [(3, "a"), (1, "b"),
                                                                                                 None]
        context.get_state(spec, "A", GlobalWindow()).write((4, "a"))
    with handler.process_instruction_id("bundle-2", [token]):
        boot._prefetch(context, [spec], chunk)  # cached since: nothing asked again
        assert runner.gets == [key("A"), key("B"), key("C")]
