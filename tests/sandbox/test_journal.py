"""The sandbox survives a restart (issue 17, finding 9): a platform with a journal, rebuilt from it, has every
case exactly as it was (same states and etags, same idempotency keys) and goes on exactly as one that never
stopped."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sandbox.journal import PlatformJournal
from sandbox.operators import operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.simulate import sample, step_model


def drive(platform: SandboxPlatform, case_id: str, steps: int, seed: int) -> None:
    """``steps`` actions an operator would take (a lookup, a chat reply, a submit...), with idempotency keys."""
    pool = operator_pool(3, 0)
    rng = random.Random(seed)
    posterior = {op.operator_id: 1 / 3 for op in pool}
    for _ in range(steps):
        case = platform.case(case_id)
        if case.ended:
            return
        dist = step_model(platform, case_id, pool, posterior).per_operator[pool[0].operator_id]
        if not dist:
            return
        platform.act(case_id, sample(dist, rng), f"{case_id}:{case.step}")


def test_a_platform_rebuilt_from_its_journal_is_the_same_and_goes_on_the_same(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.db"
    first = SandboxPlatform(seed=3)
    assert first.attach_journal(PlatformJournal(path, seed=3)) == 0
    cases = [first.open_case() for _ in range(6)]
    for n, case_id in enumerate(cases):
        drive(first, case_id, 2 + n, seed=n)
    first.forget(cases[0])
    before = {case_id: first.observe(case_id) for case_id in cases[1:]}
    keys = {case_id: dict(first.case(case_id).idempotency) for case_id in cases[1:]}
    assert first.journal is not None
    first.journal.close()
    first.journal = None  # it goes on without recording: the reference run

    second = SandboxPlatform(seed=3)
    assert second.attach_journal(PlatformJournal(path, seed=3)) > len(cases)
    assert sorted(second.cases) == sorted(cases[1:])
    assert {case_id: second.observe(case_id) for case_id in cases[1:]} == before
    assert {case_id: dict(second.case(case_id).idempotency) for case_id in cases[1:]} == keys
    # A key applied before the restart is still known: re-sent, it changes nothing.
    case_id, (key, _) = cases[1], next(iter(keys[cases[1]].items()))
    step = second.case(case_id).step
    second.act(case_id, second.case(case_id).actions[0], key)
    assert second.case(case_id).step == step

    # And it goes on as the one that never stopped.
    for platform in (first, second):
        drive(platform, cases[2], 3, seed=99)
        platform.open_case()
    assert second.observe(cases[2]) == first.observe(cases[2])
    newest = sorted(second.cases)[-1]
    assert second.observe(newest) == first.observe(newest)


def test_a_journal_belongs_to_its_seed(tmp_path: Path) -> None:
    PlatformJournal(tmp_path / "sandbox.db", seed=1).close()
    with pytest.raises(ValueError, match=r"^seed:"):
        PlatformJournal(tmp_path / "sandbox.db", seed=2)
