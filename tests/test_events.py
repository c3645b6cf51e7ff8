"""The event hub's bounded backlog: what a reconnecting client gets back, and when it is told of a gap."""

from __future__ import annotations

import asyncio

from engine.daemon.events import EventHub
from engine.protocol import JobQueuedEvent


def test_since_reports_a_gap_exactly_when_events_after_seq_were_dropped():
    """since(seq) flags a gap only when some event after `seq` has rolled out of the backlog.

    A client that gets gap=False trusts the missed events to be complete and does not reload its
    state, so a gap never flagged loses events silently, while one flagged too eagerly forces a reload.
    """

    async def scenario() -> tuple[EventHub, dict[int, tuple[list[int], bool]]]:
        hub = EventHub(asyncio.get_running_loop(), backlog=4)  # made on its loop: publishes happen at once
        answers = {}
        for number in range(1, 4):
            hub.publish(JobQueuedEvent(job_id=f"job-{number}", prompt="a snail"))
        missed, gap = hub.since(0)
        answers[-1] = ([message["seq"] for message in missed], gap)  # before the roll-over
        for number in range(4, 11):
            hub.publish(JobQueuedEvent(job_id=f"job-{number}", prompt="a snail"))
        for seq in (0, 5, 6, 7, 10):
            missed, gap = hub.since(seq)
            answers[seq] = ([message["seq"] for message in missed], gap)
        return hub, answers

    hub, answers = asyncio.run(scenario())
    assert hub.seq == 10 and [message["seq"] for message in hub.log] == [7, 8, 9, 10]
    assert answers[-1] == ([1, 2, 3], False)
    assert answers[0] == ([7, 8, 9, 10], True)
    assert answers[5] == ([7, 8, 9, 10], True)  # event 6 was dropped
    assert answers[6] == ([7, 8, 9, 10], False)  # the oldest retained is the next one: nothing lost
    assert answers[7] == ([8, 9, 10], False)
    assert answers[10] == ([], False)
