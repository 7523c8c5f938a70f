#!/usr/bin/env python
"""Starts one Python SDK worker for the local cluster's worker pool, the way Beam's container boot does.

Beam's worker pool (`worker_pool_main`) on its own starts each worker as a bare SdkHarness: no state cache (every
keyed-state read crosses gRPC to the TaskManager) and no log handler (a worker's log lines, its errors included,
are lost). Given as the pool's --container_executable, this is called with the worker's endpoints instead: it asks
the job's provisioning service for the pipeline options and runs `sdk_worker_main`, which sizes the state cache
from them (--max_cache_memory_usage_mb) and sends the worker's log to the runner (the TaskManager's log). A bundle's
keyed-state writes go out together (_commit_user_state), and the reads a chunk of a stateful step's input will make
of keys the state cache lacks are asked for together before its first element (_process_encoded; most of a stream's
keys are new to the worker, and each read would otherwise wait for its own round trip;
JOURNEYS_PREFETCH_STATE=0 leaves Beam's own). Each state cache's hit ratio goes to stderr every
JOURNEYS_STATE_CACHE_REPORT_S (default 60).

    sdk_worker_boot.py --id=ID --provision_endpoint=HOST:PORT --control_endpoint=HOST:PORT
                       --logging_endpoint=HOST:PORT [--artifact_endpoint=HOST:PORT]
"""
import argparse
import collections
import faulthandler
import os
import sys
import tempfile
import threading
import time

import grpc
from apache_beam.coders import coder_impl
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import (beam_fn_api_pb2, beam_provision_api_pb2, beam_provision_api_pb2_grpc,
                                         beam_runner_api_pb2, endpoints_pb2)
from apache_beam.runners.worker import bundle_processor, sdk_worker_main, statecache
from apache_beam.transforms import userstate
from apache_beam.utils import proto_utils
from google.protobuf import json_format, text_format


def descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url), as_one_line=True)


def _send_writes(bag: bundle_processor.SynchronousBagRuntimeState):
    """SynchronousBagRuntimeState.commit without its wait: the future of the bag's last write request, or None."""
    last = None
    if bag._cleared:
        last = bag._state_handler.clear(bag._state_key)
    if bag._added_elements:
        last = bag._state_handler.extend(bag._state_key, bag._value_coder.get_impl(), bag._added_elements)
    return last


def _commit_user_state(context: bundle_processor.FnApiUserStateContext) -> None:
    """Beam's commit of a bundle's keyed state waits for each state cell's writes to come back before it sends the
    next cell's: one round trip to the TaskManager per key and cell, in a row, at the end of every bundle. The writes
    go out on one ordered gRPC stream, so Beam itself waits only for a cell's last request; this sends every bag's
    and value's writes first and then waits for them all."""
    pending = []
    for state in context._all_states.values():
        if type(state) is bundle_processor.ReadModifyWriteRuntimeState:
            state = state._underlying_bag_state
        if type(state) is bundle_processor.SynchronousBagRuntimeState:
            pending.append(_send_writes(state))
        else:
            state.commit()
    for future in pending:
        if future is not None:
            future.get()


class _Prefetched:
    """A state cache entry whose value a GET already on its way will bring: the cache treats it as a value (a hit)
    and, the first time it is asked, it waits for the answer and decodes it as Beam's own read would."""
    PENDING_WEIGHT = 8

    def __init__(self, cache, cache_key, state_key, future, coder_impl, state_handler):
        self.cache, self.cache_key, self.state_key, self.future = cache, cache_key, state_key, future
        self.coder_impl, self.state_handler = coder_impl, state_handler
        self.values = None
        self._weight = self.PENDING_WEIGHT

    def weight(self) -> int:
        return self._weight

    def value(self):
        if self.values is not None:
            return self.values
        grpc_handler = self.state_handler._underlying
        while not self.future.wait(timeout=1):
            if grpc_handler._exception:
                self._forget()
                raise grpc_handler._exception
        response = self.future.get()
        if response.error or response.get.continuation_token:  # Flink sends state whole; else read as Beam does
            self._forget()
            if response.error:
                raise RuntimeError(response.error)
            return self.state_handler._partially_cached_iterable(self.state_key, self.coder_impl)
        stream = coder_impl.create_InputStream(response.get.data)
        values = []
        while stream.size() > 0:
            values.append(self.coder_impl.decode_from_stream(stream, True))
        with self.cache._lock:
            self.values = values
            if self.cache._cache.get(self.cache_key) is self:  # not replaced by a write meanwhile
                self._weight = max(statecache.get_deep_size(values), 1)
                self.cache._current_weight += self._weight - self.PENDING_WEIGHT
        return values

    def _forget(self):
        with self.cache._lock:
            if self.cache._cache.get(self.cache_key) is self:
                del self.cache._cache[self.cache_key]
                self.cache._current_weight -= self._weight


PREFETCHED = collections.Counter()  # transform id → GETs sent ahead of its elements, for the cache's report
_STATE_CONTEXTS: dict = {}  # (state handler, transform id) → the user state context last made for it


def _remember_state_context(self, state_handler, transform_id, *args, **kwargs):
    _beam_state_context_init(self, state_handler, transform_id, *args, **kwargs)
    _STATE_CONTEXTS[(id(state_handler), transform_id)] = self


def _create_execution_tree(self, descriptor):
    """Beam's, and then each input operation learns which stateful DoFns it feeds directly: (their user state
    context, their ReadModifyWrite specs)."""
    ops = _beam_create_execution_tree(self, descriptor)
    for source_id, op in ops.items():
        if isinstance(op, bundle_processor.DataInputOperation):
            outputs = set(descriptor.transforms[source_id].outputs.values())
            op._journeys_prefetch = [
                target for transform_id, transform in descriptor.transforms.items()
                if transform.spec.urn == common_urns.primitives.PAR_DO.urn and outputs & set(transform.inputs.values())
                for target in [_stateful_reader(self, transform_id, transform)] if target]
    for transform_id in descriptor.transforms:
        _STATE_CONTEXTS.pop((id(self.state_handler), transform_id), None)
    return ops


def _stateful_reader(processor, transform_id, transform):
    payload = proto_utils.parse_Bytes(transform.spec.payload, beam_runner_api_pb2.ParDoPayload)
    context = _STATE_CONTEXTS.get((id(processor.state_handler), transform_id))
    if not payload.state_specs or context is None or payload.side_inputs:
        return None
    dofn = pickler.loads(payload.do_fn.payload)[0]
    state_specs, _ = userstate.get_dofn_specs(dofn)
    specs = [spec for spec in state_specs if isinstance(spec, userstate.ReadModifyWriteStateSpec)]
    return (context, specs) if specs else None


def _prefetch(context, specs, windowed_values) -> None:
    """Sends a GET for every ReadModifyWrite cell of each element's key the state cache lacks, before the first
    element is processed: a bundle's reads of new keys wait on one round trip together, not one after another."""
    handler = context._state_handler
    cache = getattr(handler, "_state_cache", None)
    if cache is None or not cache.is_cache_enabled():
        return
    seen = set()  # (key, window) pairs of this chunk: a key's cells are asked for once
    for windowed_value in windowed_values:
        encoded_key = context._key_coder.encode_nested(windowed_value.value[0])
        for window in windowed_value.windows:
            encoded_window = context._window_coder.encode(window)
            if (encoded_key, encoded_window) in seen:
                continue
            seen.add((encoded_key, encoded_window))
            for spec in specs:
                state_key = beam_fn_api_pb2.StateKey(bag_user_state=beam_fn_api_pb2.StateKey.BagUserState(
                    transform_id=context._transform_id, user_state_id=spec.name, window=encoded_window,
                    key=encoded_key))
                token = handler._get_cache_token(state_key)
                if not token:
                    return
                cache_key = (handler._convert_to_cache_key(state_key), token)
                with cache._lock:
                    if cache_key in cache._cache:
                        continue
                PREFETCHED[context._transform_id] += 1
                future = handler._underlying._request(beam_fn_api_pb2.StateRequest(
                    state_key=state_key, get=beam_fn_api_pb2.StateGetRequest()))
                entry = _Prefetched(cache, cache_key, state_key, future, spec.coder.get_impl(), handler)
                with cache._lock:
                    if cache_key not in cache._cache:
                        cache._cache[cache_key] = entry
                        cache._current_weight += entry.weight()


def _process_encoded(self, encoded_windowed_values: bytes) -> None:
    """DataInputOperation.process_encoded that decodes a whole data chunk, prefetches the keyed state its stateful
    consumer will read, and then processes the elements as Beam does."""
    targets = getattr(self, "_journeys_prefetch", None)
    if not targets:
        return _beam_process_encoded(self, encoded_windowed_values)
    input_stream = coder_impl.create_InputStream(encoded_windowed_values)
    decoded = []
    while input_stream.size() > 0:
        try:
            decoded.append(self.windowed_coder_impl.decode_from_stream(input_stream, True))
        except Exception as exn:
            raise ValueError(f"Error decoding input stream with coder {self.windowed_coder} in step "
                             f"{self.name_context.step_name}") from exn
    for context, specs in targets:
        _prefetch(context, specs, decoded)
    for decoded_value in decoded:
        with self.splitting_lock:
            if self.index == self.stop - 1:
                return
            self.index += 1
        self.output(decoded_value)


_beam_process_encoded = bundle_processor.DataInputOperation.process_encoded
_beam_create_execution_tree = bundle_processor.BundleProcessor.create_execution_tree
_beam_state_context_init = bundle_processor.FnApiUserStateContext.__init__


def _prefetch_state() -> None:
    bundle_processor.FnApiUserStateContext.__init__ = _remember_state_context
    bundle_processor.BundleProcessor.create_execution_tree = _create_execution_tree
    bundle_processor.DataInputOperation.process_encoded = _process_encoded


def _report_state_cache(every_s: float):
    """Every `every_s`, each state cache's hit ratio on stderr (the pool's workers.log): on Flink a keyed-state read
    the cache misses is a round trip to the TaskManager, a stream's costliest wait. Returns one report."""
    caches = []
    create = statecache.StateCache.__init__

    def created(self, *args, **kwargs):
        create(self, *args, **kwargs)
        caches.append(self)

    statecache.StateCache.__init__ = created

    def report():
        for cache in caches:
            print(f"journeys sdk worker {os.environ.get('WORKER_ID')}: state cache {cache.describe_stats()}; "
                  f"reads asked ahead: {dict(PREFETCHED) or 'none'}", file=sys.stderr, flush=True)

    def every():
        while True:
            time.sleep(every_s)
            report()

    threading.Thread(target=every, name="journeys-state-cache-report", daemon=True).start()
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    for name in ("id", "provision_endpoint", "control_endpoint", "logging_endpoint", "artifact_endpoint"):
        parser.add_argument(f"--{name}", required=name != "artifact_endpoint")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", args.id)]).info
    os.environ.update({
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(info.control_endpoint.url or args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": descriptor(info.logging_endpoint.url or args.logging_endpoint),
        "SEMI_PERSISTENT_DIRECTORY": tempfile.mkdtemp(prefix=f"beam-worker-{args.id}-"),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    })
    bundle_processor.FnApiUserStateContext.commit = _commit_user_state
    if os.environ.get("JOURNEYS_PREFETCH_STATE", "1") == "1":
        _prefetch_state()
    _report_state_cache(float(os.environ.get("JOURNEYS_STATE_CACHE_REPORT_S", "60")))
    faulthandler.enable()  # a worker that dies in native code leaves its stack in the pool's log
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
