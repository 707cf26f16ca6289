"""The poller under random interleavings of what happens around its reads: followers that come, leave
or move to another model, alias moves, pushes (webhooks), and reads (direct or sweeps, on time or past
the sweep deadline) that start, answer or fail in any order. Every read is held open until the test
lets it answer (test_poller.HeldPoller), so the order is the test's, not the threads'.

After every step: nothing escaped the poll loop (no crash logged), and a follower was woken only
with an answer that differs from the one it had. Once every read has answered: every followed model
is answered, and a model whose latest move was pushed shows that move (no push is lost).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted_registry import REGISTRY, HeldPoller, ScriptedRegistry, settle

from aliasroll.backoff import Backoff
from aliasroll.errors import ModelNotFound, RegistryError, RegistryUnavailable
from aliasroll.registry.poller import ModelSnapshot

MODELS = ["m1", "m2", "m3", "ghost"]  # ghost is not in the registry
FOLLOWERS = 4

STEPS = st.one_of(
    st.tuples(st.just("follow"), st.integers(0, FOLLOWERS - 1), st.integers(0, len(MODELS) - 1)),
    st.tuples(st.just("leave"), st.integers(0, FOLLOWERS - 1), st.just(0)),
    # @production to a new version, or @canary set / removed
    st.tuples(st.just("move"), st.integers(0, 2), st.integers(0, 1)),
    st.tuples(st.just("push"), st.integers(0, len(MODELS) - 1), st.just(0)),
    st.tuples(st.just("answer"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("fail"), st.integers(0, 7), st.just(0)),
)


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Run:
    def __init__(self, *, sweep_threshold: int, sweep_deadline: float) -> None:
        self.registry = ScriptedRegistry({f"m{n}": {"production": "1"} for n in (1, 2, 3)})
        self.poller = HeldPoller(
            self.registry,
            sweep_threshold=sweep_threshold,
            sweep_deadline=sweep_deadline,  # 0: every sweep is late at once; 3600: never
            answer_timeout=3600.0,
            batch_window=0.0,
            backoff=Backoff(base=0.05, cap=0.05),  # a failed read is retried 40-50 ms later
        )
        self.following: dict[int, str] = {}
        self.seen: dict[int, ModelSnapshot | None] = {}  # the answer each follower last had
        self.pushed = dict.fromkeys(MODELS, True)  # False: moved since the last push
        self.asks: list[asyncio.Future[ModelSnapshot]] = []
        self.problems: list[str] = []

    def entry_snapshot(self, model: str) -> ModelSnapshot | None:
        entry = self.poller._entries.get((REGISTRY, model))
        return None if entry is None else entry.snapshot

    def wake(self, follower: int) -> None:
        model = self.following.get(follower)
        if model is None:
            self.problems.append(f"follower {follower} woken after it left")
            return
        snapshot = self.entry_snapshot(model)
        if snapshot is None or snapshot.same_answer(self.seen[follower]):
            self.problems.append(f"follower {follower} of {model} woken for the same answer {snapshot}")
        self.seen[follower] = snapshot

    def step(self, action: str, a: int, b: int) -> None:
        held = self.poller.held
        if action == "follow":
            model = MODELS[b]
            if self.following.get(a) != model:
                self.following[a] = model
                self.seen[a] = self.entry_snapshot(model)
            self.asks.append(
                asyncio.ensure_future(
                    self.poller.subscribe(
                        subscriber=a,
                        endpoint=REGISTRY,
                        model=model,
                        interval=3600.0,
                        wake=lambda: self.wake(a),
                    )
                )
            )
        elif action == "leave":
            self.poller.unsubscribe(a)
            self.following.pop(a, None)
        elif action == "move":
            model = MODELS[a]
            aliases = self.registry.aliases[model]
            if b == 0:
                aliases["production"] = str(int(aliases["production"]) + 1)
            elif "canary" in aliases:
                del aliases["canary"]
            else:
                aliases["canary"] = "9"
            self.pushed[model] = False
        elif action == "push":
            self.poller.refresh(MODELS[a])
            self.pushed[MODELS[a]] = True
        elif action == "answer" and held:
            held[a % len(held)].answers()
        elif action == "fail" and held:
            held[a % len(held)].fails(RegistryUnavailable("the registry is down"))

    async def drain(self) -> None:
        """Answers every read (the failed ones' retries included) until none is left."""
        for _ in range(200):
            await settle()
            if self.poller.held:
                for call in list(self.poller.held):
                    call.answers()
                continue
            if not any(self._retrying(model) for model in self.following.values()):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"reads never end: {self.poller.held}")

    def _retrying(self, model: str) -> bool:
        snapshot = self.entry_snapshot(model)
        return snapshot is not None and isinstance(snapshot.error, RegistryUnavailable)

    def expected(self, model: str) -> dict[str, str] | type[RegistryError]:
        aliases = self.registry.aliases.get(model)
        return ModelNotFound if aliases is None else aliases


async def scenario(steps: list[tuple[str, int, int]], *, sweep_threshold: int, sweep_deadline: float) -> None:
    run = Run(sweep_threshold=sweep_threshold, sweep_deadline=sweep_deadline)
    errors = Errors()
    logger = logging.getLogger("aliasroll.registry.poller")
    logger.addHandler(errors)
    try:
        for number, step in enumerate(steps):
            run.step(*step)
            await settle()
            assert errors.messages == [], f"after step {number} {step}: {errors.messages}"
            assert run.problems == [], f"after step {number} {step}: {run.problems}"

        await run.drain()
        assert errors.messages == []
        assert run.problems == []
        for follower, model in run.following.items():
            snapshot = run.entry_snapshot(model)
            assert snapshot is not None, f"follower {follower} of {model} never answered"
            if not run.pushed[model]:
                continue  # an unpushed move waits for the grid (an hour here)
            expected = run.expected(model)
            if isinstance(expected, dict):
                assert snapshot.aliases == expected, f"a push of {model} was lost"
            else:
                assert isinstance(snapshot.error, expected)
        for ask in run.asks:
            if ask.done():
                ask.result()  # raises what subscribe raised
    finally:
        for ask in run.asks:
            ask.cancel()
        await run.poller.close()
        logger.removeHandler(errors)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(STEPS, max_size=30),
    sweep=st.booleans(),
    sweep_deadline=st.sampled_from([0.0, 3600.0]),
)
def test_no_interleaving_loses_a_push_crashes_the_loop_or_wakes_for_nothing(
    steps: list[tuple[str, int, int]], sweep: bool, sweep_deadline: float
) -> None:
    asyncio.run(scenario(steps, sweep_threshold=2 if sweep else 25, sweep_deadline=sweep_deadline))


def test_the_crash_of_the_issue() -> None:
    """The interleaving seen on a real control plane: a resource deleted while its model is read
    with another's, then a push for the other."""
    steps: list[Any] = [
        ("follow", 0, 0),
        ("follow", 1, 1),
        ("answer", 0, 0),
        ("answer", 0, 0),
        ("push", 0, 0),
        ("push", 1, 0),
        ("leave", 0, 0),
        ("move", 1, 0),
        ("push", 1, 0),
        ("answer", 0, 0),
        ("answer", 0, 0),
    ]
    asyncio.run(scenario(steps, sweep_threshold=25, sweep_deadline=3600.0))
