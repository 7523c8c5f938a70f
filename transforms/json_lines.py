"""A JSON-lines file sink that survives a kill: each element is one line, written and fsynced at once.

For diagnostics and tests (what has a running or killed job emitted so far?), not for warehouse tables.
"""
from __future__ import annotations

import json
import os
import threading

import apache_beam as beam

_lock = threading.Lock()  # LOOPBACK workers share the process: lines must not interleave


class AppendJsonLines(beam.DoFn):
    def __init__(self, path: str):
        self.path = path

    def process(self, row: dict):
        with _lock, open(self.path, "a") as out:
            out.write(json.dumps(row, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())


def read_json_lines(path) -> list[dict]:
    """The complete lines of `path` (a killed writer may leave half a line at the end); [] if it is missing."""
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.endswith("\n")]
