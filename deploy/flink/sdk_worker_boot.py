#!/usr/bin/env python
"""Starts one Python SDK worker for the local cluster's worker pool, the way Beam's container boot does.

Beam's worker pool (`worker_pool_main`) on its own starts each worker as a bare SdkHarness: no state cache (every
keyed-state read crosses gRPC to the TaskManager) and no log handler (a worker's log lines, its errors included,
are lost). Given as the pool's --container_executable, this is called with the worker's endpoints instead: it asks
the job's provisioning service for the pipeline options and runs `sdk_worker_main`, which sizes the state cache
from them (--max_cache_memory_usage_mb) and sends the worker's log to the runner (the TaskManager's log). A bundle's
keyed-state writes go out together (_commit_user_state). Each state cache's hit ratio goes to stderr every
JOURNEYS_STATE_CACHE_REPORT_S (default 60).

    sdk_worker_boot.py --id=ID --provision_endpoint=HOST:PORT --control_endpoint=HOST:PORT
                       --logging_endpoint=HOST:PORT [--artifact_endpoint=HOST:PORT]
"""
import argparse
import faulthandler
import os
import sys
import tempfile
import threading
import time

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
from apache_beam.runners.worker import bundle_processor, sdk_worker_main, statecache
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
            print(f"journeys sdk worker {os.environ.get('WORKER_ID')}: state cache {cache.describe_stats()}",
                  file=sys.stderr, flush=True)

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
    _report_state_cache(float(os.environ.get("JOURNEYS_STATE_CACHE_REPORT_S", "60")))
    faulthandler.enable()  # a worker that dies in native code leaves its stack in the pool's log
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
