"""The policy in child processes (policy.process): the same proposals as in process, failures that reach the
caller as errors and never take it down, and a restart after a child dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from policy.combined import load_policy
from policy.process import PolicyProcessError, PolicyProcesses, _chunks
from policy.replies import with_reply_guard
from schemas.state import UIState
from tests.policy.checkpoints import tiny_saved_policy


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[UIState]]:
    return tiny_saved_policy(tmp_path_factory.mktemp("process"), seed=5, architecture="llama")


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.action == y.action
            assert [s.action for s in x.alternatives] == [s.action for s in y.alternatives]
            assert x.features.probability == pytest.approx(y.features.probability, abs=1e-5)


def test_two_processes_propose_what_the_policy_proposes_in_process_and_survive_an_error(
    saved_policy: tuple[Path, list[UIState]],
) -> None:
    path, states = saved_policy
    local = with_reply_guard(load_policy(path))
    with PolicyProcesses(path, processes=2) as remote:
        assert remote.version_ == local.version_
        batch = states[:13]  # split 7 + 6 over the two children and put back in order
        _same(remote.propose_batch(batch, k=3), local.propose_batch(batch, k=3))
        _same(remote.propose_batch(batch[:1], k=3), local.propose_batch(batch[:1], k=3))  # one child idle
        assert remote.propose_batch([], k=3) == []
        with pytest.raises(PolicyProcessError, match="Error"):  # a child's policy raises: the caller gets it
            remote.propose_batch(["not a state", *batch[:3]])  # type: ignore[list-item]
        _same(remote.propose_batch(batch, k=3), local.propose_batch(batch, k=3))  # and the children go on
        assert remote.restarts == 0
        assert all(pid is not None for pid in remote.pids())
    assert remote.pids() == [None, None]  # closed: the children are stopped
    _same(remote.propose_batch(batch, k=3), local.propose_batch(batch, k=3))  # and start again when called
    assert remote.restarts == 0 and all(pid is not None for pid in remote.pids())
    remote.close()


def test_a_dead_child_fails_the_call_and_is_started_again(saved_policy: tuple[Path, list[UIState]]) -> None:
    path, states = saved_policy
    with PolicyProcesses(path, processes=1, reply_guard=False) as remote:
        expected = remote.propose_batch(states[:4])
        pid = remote.pids()[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        remote._children[0].process.join(timeout=10)  # type: ignore[union-attr]  # the kill has landed
        _same(remote.propose_batch(states[:4]), expected)  # a new child answers
        assert remote.restarts == 1 and remote.pids()[0] not in (None, pid)


def test_a_directory_without_a_policy_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(PolicyProcessError, match="not a policy directory"):
        PolicyProcesses(tmp_path, start_timeout_s=120)
    with pytest.raises(ValueError, match="processes"):
        PolicyProcesses(tmp_path, processes=0)


def test_chunks_cover_every_item_in_order() -> None:
    assert _chunks(13, 2) == [(0, 7), (7, 13)]
    assert _chunks(1, 4) == [(0, 1)]
    assert _chunks(6, 3) == [(0, 2), (2, 4), (4, 6)]
