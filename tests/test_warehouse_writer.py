"""The stream's writer (transforms/warehouse.py) when a task fails and its state is restored from a checkpoint
while the worker, and what it knew, lives on: it must neither fail on the older state nor commit before the reads
pass what the warehouse already holds."""
from types import SimpleNamespace

from transforms.dq_suites import QualityConfig
from transforms.warehouse import READ, TICK, _CommitPeriodically

PARTITION = ("orders", 0)


class Value:
    def __init__(self, value=None):
        self.value = value

    def read(self):
        return self.value

    def write(self, value):
        self.value = value


class Bag:
    def __init__(self, items=()):
        self.items = list(items)

    def read(self):
        return list(self.items)

    def add(self, item):
        self.items.append(item)

    def clear(self):
        self.items = []


class Landing:
    """The data-quality landing reduced to the commit (its checks have tests of their own)."""

    def __init__(self, warehouse):
        self.warehouse = warehouse

    def land(self, rows, offsets):
        self.warehouse.commit(rows, offsets)
        return SimpleNamespace(published="here", quarantined=0)


def test_state_restored_behind_the_last_commit_waits_for_the_reads_to_pass_the_stored_offsets(tmp_path):
    writer = _CommitPeriodically(str(tmp_path / "w.duckdb"), commit_every_s=0, hold_after_catch_up_s=0,
                                 quality=QualityConfig())
    writer.setup()
    writer.quality = Landing(writer.warehouse)
    state = dict(pending=Bag(), last_commit=Value(), caught_up_at=Value())

    def deliver(item, state):
        return list(writer.process((None, item), **state))

    deliver((READ, PARTITION, 5), state)  # the first item starts the interval
    checkpoint = {name: type(s)(s.read()) for name, s in state.items()}  # taken before any commit
    assert deliver((TICK,), state)[0]["read"] == {PARTITION: 5}
    assert writer.warehouse.offsets() == {PARTITION: 5}

    # A task failed: the state is the checkpoint's again, and the read resumes from the checkpoint's position.
    restored = {name: type(s)(s.read()) for name, s in checkpoint.items()}
    assert deliver((READ, PARTITION, 3), restored) == []
    assert deliver((TICK,), restored) == []  # behind the stored offsets: no commit
    assert writer.warehouse.offsets() == {PARTITION: 5}
    deliver((READ, PARTITION, 7), restored)
    assert deliver((TICK,), restored)[0]["read"] == {PARTITION: 7}
    assert writer.warehouse.offsets() == {PARTITION: 7}
    writer.teardown()
