"""The work queue behind leader election: a standby's keys wait for the gate, and on shutdown the
pass in flight finishes before the Lease is handed over."""

from __future__ import annotations

import asyncio

import pytest

from daoflow_operator import election
from daoflow_operator.handlers import WorkQueue


def test_a_closed_gate_holds_every_key_and_opening_it_processes_each_once():
    async def scenario():
        seen: list = []

        async def process(key):
            seen.append(key)

        gate = asyncio.Event()
        queue = WorkQueue(process, gate=gate)
        worker = asyncio.create_task(queue.run())
        for key in [("ns", "a"), ("ns", "b"), ("ns", "a"), ("ns", "c")]:
            queue.add(key)
        await asyncio.sleep(0.1)
        assert seen == []
        queue.add(("ns", "b"))  # coalesced with the waiting one
        gate.set()
        await asyncio.sleep(0.1)
        worker.cancel()
        return seen

    assert sorted(asyncio.run(scenario())) == [("ns", "a"), ("ns", "b"), ("ns", "c")]


def test_drain_waits_for_the_pass_in_flight_and_a_cleared_gate_starts_no_other():
    async def scenario():
        started, finished = [], []
        release = asyncio.Event()

        async def process(key):
            started.append(key)
            await release.wait()
            finished.append(key)

        gate = asyncio.Event()
        gate.set()
        queue = WorkQueue(process, workers=1, gate=gate)
        worker = asyncio.create_task(queue.run())
        queue.add(("ns", "a"))
        await asyncio.sleep(0.05)
        gate.clear()
        queue.add(("ns", "b"))
        assert not await queue.drain(0.1)  # still running
        release.set()
        assert await queue.drain(1.0)
        await asyncio.sleep(0.05)
        worker.cancel()
        return started, finished

    started, finished = asyncio.run(scenario())
    assert started == finished == [("ns", "a")]


@pytest.mark.parametrize("timing", [election.Timing(10, 10, 2), election.Timing(15, 10, 9),
                                    election.Timing(3, 2, 0)])
def test_impossible_election_timings_are_refused(timing):
    with pytest.raises(ValueError):
        timing.check()


def test_the_default_timing_is_valid():
    election.Timing().check()
