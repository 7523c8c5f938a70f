#!/usr/bin/env python
"""Starts one Python SDK worker for the local cluster's worker pool, the way Beam's container boot does.

Beam's worker pool (`worker_pool_main`) on its own starts each worker as a bare SdkHarness: no state cache (every
keyed-state read crosses gRPC to the TaskManager) and no log handler (a worker's log lines, its errors included,
are lost). Given as the pool's --container_executable, this is called with the worker's endpoints instead: it asks
the job's provisioning service for the pipeline options and runs `sdk_worker_main`, which sizes the state cache
from them (--max_cache_memory_usage_mb) and sends the worker's log to the runner (the TaskManager's log).

    sdk_worker_boot.py --id=ID --provision_endpoint=HOST:PORT --control_endpoint=HOST:PORT
                       --logging_endpoint=HOST:PORT [--artifact_endpoint=HOST:PORT]
"""
import argparse
import faulthandler
import os
import sys
import tempfile

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
from apache_beam.runners.worker import sdk_worker_main
from google.protobuf import json_format, text_format


def descriptor(url: str) -> str:
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url), as_one_line=True)


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
    faulthandler.enable()  # a worker that dies in native code leaves its stack in the pool's log
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
