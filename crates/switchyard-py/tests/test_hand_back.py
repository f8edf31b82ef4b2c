"""``switchyard.HandBack``: a Python handler gives a transport's delivery back to the
transport ("not mine"): delivered again, not an attempt, not retried in place, not
dead-lettered; without a transport it fails for good at once."""

from __future__ import annotations

import pytest

import switchyard
from conftest import Collector


@pytest.mark.parametrize("prefetch", [1, 4])
async def test_a_hand_back_on_the_log_is_delivered_again_without_counting_an_attempt(tmp_path, prefetch):
    bus = switchyard.Bus.open_log(tmp_path / "bus", retry_delay=0.01)
    seen = Collector()
    handed = []

    @bus.on("jobs.x", name="worker", prefetch=prefetch, max_attempts=2)
    async def worker(env):
        if len(handed) < 3:
            handed.append(env.attempt)
            raise switchyard.HandBack("not mine", after=0.01 if len(handed) == 2 else None)
        seen.add(env.attempt)

    try:
        await bus.publish("jobs.x", {"n": 1})
        assert await seen.wait(1) == [1], "handled at its first attempt"
        assert handed == [1, 1, 1], "a hand-back is not an attempt"
        assert bus.dead_letters() == []
    finally:
        await bus.shutdown()
        bus.close()


async def test_without_a_transport_a_hand_back_fails_for_good_at_once(bus):
    seen = Collector()

    @bus.on("jobs.y", max_attempts=5)
    async def worker(env):
        seen.add(env.attempt)
        raise switchyard.HandBack("nobody here")

    await bus.publish("jobs.y", {})
    await bus.idle()
    assert seen.items == [1], "not retried in place"
    [dl] = bus.dead_letters()
    assert dl.attempts == 1
    assert "handed back to the transport: nobody here" in dl.error, dl.error


def test_hand_back_checks_its_arguments():
    assert switchyard.HandBack().reason
    assert switchyard.HandBack("x", after=0.5).after == 0.5
    with pytest.raises(ValueError):
        switchyard.HandBack("x", after=-1)
    with pytest.raises(TypeError):
        switchyard.HandBack("x", after="soon")
    with pytest.raises(TypeError):
        switchyard.HandBack(3)
