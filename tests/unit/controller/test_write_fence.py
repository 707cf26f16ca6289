"""The write fence: passes run only while it is up and are cancelled when it closes; a write past
the lease's deadline ends its pass before it starts; a fence closed for a moment by a late renewal
still says it is raised."""

from __future__ import annotations

import asyncio

from aliasroll.controller.write_fence import Fence


def test_the_fence_runs_passes_only_while_up_and_cancels_them_when_it_closes() -> None:
    async def scenario() -> tuple[object, object, object, bool]:
        fence = Fence()
        started = asyncio.Event()

        async def long_pass() -> str:
            started.set()
            await asyncio.sleep(60)
            return "done"

        async def quick_pass() -> str:
            return "done"

        closed_result = await fence.run(quick_pass())  # not leading: never runs
        fence.raise_()
        quick = await fence.run(quick_pass())
        running = asyncio.create_task(fence.run(long_pass()))
        await started.wait()
        fence.close()
        cut = await running
        # The caller's own cancellation (the scheduler stopping a worker) still propagates.
        fence.raise_()
        outer = asyncio.create_task(fence.run(long_pass()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        outer.cancel()
        try:
            await outer
        except asyncio.CancelledError:
            propagated = True
        else:
            propagated = False
        return closed_result, quick, cut, propagated

    assert asyncio.run(scenario()) == (None, "done", None, True)


def test_a_write_past_the_deadline_ends_the_pass_before_it_starts() -> None:
    """A pass suspended past the deadline (a frozen process) resumes before the elector notices:
    its next write finds the fence closed on the clock, and the pass ends as cut off."""

    async def scenario() -> tuple[object, list[str]]:
        lease_valid = True
        fence = Fence()
        fence.bind(lambda: lease_valid)
        fence.raise_()
        writes: list[str] = []
        resumed, frozen = asyncio.Event(), asyncio.Event()

        async def suspended_pass() -> str:
            fence.check()
            writes.append("before the freeze")
            frozen.set()
            await resumed.wait()
            fence.check()
            writes.append("after the freeze")
            return "done"

        running = asyncio.create_task(fence.run(suspended_pass()))
        await frozen.wait()
        lease_valid = False  # the deadline passed while frozen; the elector has not run yet
        resumed.set()
        return await running, writes

    assert asyncio.run(scenario()) == (None, ["before the freeze"])


def test_a_fence_closed_by_a_late_renewal_still_says_it_is_raised() -> None:
    """A renewal answered late closes `open` for a moment without a step-down: passes refused then
    come again soon (runtime.FENCE_FLICKER), since no new leadership will wake their resources."""
    valid = True
    fence = Fence()
    fence.bind(lambda: valid)
    assert not fence.raised
    fence.raise_()
    assert (fence.open, fence.raised) == (True, True)
    valid = False
    assert (fence.open, fence.raised) == (False, True)
    fence.close()
    assert (fence.open, fence.raised) == (False, False)
