"""A test sink: every element as one JSON line appended to a file, flushed at once, so a test (or a restarted
job) can read what a running or killed pipeline has emitted so far."""
import json
import os
import threading

import apache_beam as beam

_lock = threading.Lock()


class AppendJsonLines(beam.DoFn):
    def __init__(self, path: str, to_json):
        self.path = path
        self.to_json = to_json

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        line = json.dumps(self.to_json(element, timestamp, window), default=str) + "\n"
        with _lock, open(self.path, "a") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())


def read_json_lines(path) -> list[dict]:
    """Complete lines only: a killed writer may leave half a line at the end."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as lines:
        for line in lines:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows
