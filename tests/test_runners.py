"""FnApiRunner's worker processes: the options that start them, their malloc settings, and their log records relayed as
plain lines."""
import logging
import os
from pathlib import Path

from apache_beam.portability.api import beam_fn_api_pb2

from pipelines.runners import MALLOC_SETTINGS, REPO, WORKER_LOGGER, _relay, return_freed_memory, worker_processes

INFO, WARN = beam_fn_api_pb2.LogEntry.Severity.INFO, beam_fn_api_pb2.LogEntry.Severity.WARN


def _bundle(*entries):
    return beam_fn_api_pb2.LogEntry.List(log_entries=[
        beam_fn_api_pb2.LogEntry(severity=severity, message=message, log_location=location, trace=trace)
        for severity, message, location, trace in entries])


def test_one_worker_runs_in_this_process_and_more_in_processes():
    assert worker_processes(1) == ["--direct_num_workers=1"]
    assert worker_processes(2) == ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def test_worker_processes_start_with_bounded_malloc_unless_the_user_chose(monkeypatch, tmp_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    def malloc_in_workers(run: str) -> set:
        noted = tmp_path / run  # each worker process notes its pid and glibc's malloc settings here
        noted.mkdir()

        def note(_, at=str(noted)):
            settings = ",".join(f"{name}={os.environ.get(name)}" for name in sorted(MALLOC_SETTINGS))
            (Path(at) / f"{os.getpid()} {settings}").touch()

        with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(worker_processes(2))) as p:
            _ = p | beam.Create(range(4)) | beam.Map(note)
        seen = [entry.name.split(" ") for entry in noted.iterdir()]
        assert seen and str(os.getpid()) not in {pid for pid, _ in seen}, "the elements ran in worker processes"
        return {settings for _, settings in seen}

    for name in MALLOC_SETTINGS:  # noted, so that this process's environment is restored after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return_freed_memory()
    assert malloc_in_workers("default") == {"MALLOC_ARENA_MAX=2,MALLOC_MMAP_THRESHOLD_=131072"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    return_freed_memory()
    assert malloc_in_workers("chosen") == {"MALLOC_ARENA_MAX=4,MALLOC_MMAP_THRESHOLD_=131072"}


def test_worker_records_are_relayed_as_their_message_under_their_own_logger(caplog):
    kafka = "/x/.venv/lib/python3.11/site-packages/kafka/net/selector.py:120"
    beam = "/x/.venv/lib/python3.11/site-packages/apache_beam/runners/worker/sdk_worker.py:9"
    caplog.set_level(logging.INFO, logger="journeys")  # the levels the command line sets
    caplog.set_level(logging.ERROR, logger="kafka")
    caplog.set_level(logging.WARNING)
    caplog.handler.setLevel(logging.NOTSET)  # what each logger lets through is caught
    bundle = _bundle((INFO, "read 10 records", f"{REPO}/transforms/progress.py:80", ""),
                     (WARN, "a task blocked the event loop", kafka, ""),  # below kafka's level here
                     (INFO, "creating a state cache", beam, ""),  # below the root's level
                     (WARN, "No semi_persistent_directory found: registries", beam, ""),
                     (WARN, "the commit failed", f"{REPO}/pipelines/backfill.py:60", "Traceback: boom"))
    assert list(_relay(None, [bundle])) == []
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (WORKER_LOGGER, "INFO", "read 10 records"), (WORKER_LOGGER, "WARNING", "the commit failed\nTraceback: boom")]
