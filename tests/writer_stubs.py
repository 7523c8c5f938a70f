"""Beam state and the data-quality landing, reduced to what the stream's commit step (transforms/warehouse.py)
uses: for driving it item by item in tests."""
from types import SimpleNamespace


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
        return SimpleNamespace(published="here", quarantined=0, blocked=[], warned=[], seconds={})
