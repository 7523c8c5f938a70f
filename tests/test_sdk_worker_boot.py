"""The SDK worker's boot (deploy/flink/sdk_worker_boot.py) bounds its data messages: what a worker's output stream
hands to the data plane, and what the data plane coalesces into one gRPC message, stay near DATA_MESSAGE_BYTES.
Run in a fresh interpreter, since the bound changes the SDK's module state for the whole process."""
import subprocess
import sys
from pathlib import Path

BOOT = Path(__file__).resolve().parent.parent / "deploy" / "flink"

PROBE = """
import sys
import time
sys.path.insert(0, sys.argv[1])
import sdk_worker_boot
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.worker import data_plane

sdk_worker_boot.bound_data_messages()
limit = sdk_worker_boot.DATA_MESSAGE_BYTES
record = b"x" * 1000

for time_limit_ms in (0, 60_000):  # size-based streams, and time-based ones (which also flush at a size)
    flushed = []
    stream = data_plane.ClosableOutputStream.create(None, flushed.append, time_limit_ms)
    for _ in range(5000):
        stream.write(record)
        stream.maybe_flush()
    assert len(flushed) == 4, [len(f) for f in flushed]
    assert all(limit < len(f) <= limit + len(record) for f in flushed), [len(f) for f in flushed]

channel = data_plane._GrpcDataChannel()
for _ in range(8):
    channel._enqueue_to_send(beam_fn_api_pb2.Elements.Data(instruction_id="1", transform_id="t", data=b"x" * (limit // 3)))
channel._enqueue_to_send(channel._WRITES_FINISHED)
time.sleep(1)  # the channel's forwarder thread has moved them all to the queue its writer coalesces from
messages = list(channel._write_outputs())
assert len(messages) > 1 and all(m.ByteSize() < 2 * limit for m in messages), [m.ByteSize() for m in messages]
print("bounded", limit)
"""


def test_the_workers_data_messages_are_bounded_near_a_megabyte():
    done = subprocess.run([sys.executable, "-c", PROBE, str(BOOT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["bounded", str(1 << 20)]
