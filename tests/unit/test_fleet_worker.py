"""The fleet thread survives surprises: a question is always answered, and the thread
goes on (a fake store stands in for etcd here)."""

from __future__ import annotations

import io
import queue
from typing import Any

from announcer import messages as msg
from announcer.fleet.records import Keys, Record
from announcer.fleet.store import Decision
from announcer.fleet.worker import FleetWorker
from announcer.log import Logger


class Client:
    endpoint = "http://127.0.0.1:1"

    def close(self) -> None:
        pass


class Store:
    """Raises on the first decision, answers the second; views are empty."""

    def __init__(self) -> None:
        self.client, self.keys, self.node = Client(), Keys("/a/", "g"), "n1"
        self.lease_seconds, self.lease, self.calls = 30, 0, 0

    def decide(self, service: str, record: Record, minimum: int) -> Decision:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug")
        return Decision(True, 2)

    def view(self) -> dict[str, Any]:
        return {}

    def publish(self, service: str, record: Record) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_failing_decision_is_answered_unknown_and_the_thread_goes_on() -> None:
    """An exception inside a decision answers "unknown" (logged); the next one works."""
    posted: queue.SimpleQueue[msg.Message] = queue.SimpleQueue()
    log = io.StringIO()
    worker = FleetWorker(Store(), posted.put, Logger(log), poll=0.05)  # type: ignore[arg-type]
    worker.slots.holders = lambda: {}  # type: ignore[method-assign]
    worker.start()
    try:
        record = Record(node="n1", route="WITHDRAWN", health="DOWN")
        worker.ask("web", record, 1)
        worker.ask("web", record, 1)
        answers = []
        while len(answers) < 2:
            m = posted.get(timeout=30)
            if isinstance(m, msg.FleetAnswer):
                answers.append(m.allowed)
        assert answers == [None, True]
        assert "fleet_thread_error" in log.getvalue() and "a bug" in log.getvalue()
    finally:
        worker.stop()
