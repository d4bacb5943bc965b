"""What a replica can take now: the flow controller's gate and the saturation filter read it
from one place (``Endpoint.free_slots``)."""

from __future__ import annotations

from goodput.api.load_report import LoadReport
from goodput.router.endpoints import Endpoint


def _at(queue: int, inflight: int, limit: int | None, sent: int = 0) -> Endpoint:
    e = Endpoint("r0", "http://r0")
    e.report = LoadReport(ready=True, queue=queue, inflight=inflight, limit=limit)
    e.sent_since_report = sent
    return e


def test_free_slots_under_a_limit_count_what_was_sent_since_the_report() -> None:
    assert _at(0, 2, 4).free_slots() == 2
    assert _at(0, 2, 4, sent=1).free_slots() == 1
    assert _at(0, 2, 4, sent=3).free_slots() == 0
    assert _at(0, 2, 4, sent=3).saturated


def test_a_queue_means_no_slot_and_saturated() -> None:
    e = _at(1, 0, 4)
    assert e.free_slots() == 0 and e.saturated


def test_without_a_limit_one_at_a_time_but_never_saturated() -> None:
    assert _at(0, 5, None).free_slots() == 1
    busy = _at(0, 5, None, sent=1)
    assert busy.free_slots() == 0 and not busy.saturated
    assert Endpoint("r1", "http://r1").free_slots() == 1, "not reported yet: one"
