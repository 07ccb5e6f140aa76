"""The champion: the registry's critic and its thresholds, used together, and the one place a process holds it.

A critic's scores and the thresholds fitted on them are one thing: a threshold means nothing for another critic.
``Champion`` is that pair with its registry version, frozen; ``ChampionHolder`` holds the one in use. Everything
that scores or decides (the workers, the router, the copilot route) reads ``holder.current`` once per batch or
request and uses that value throughout, so a swap (one attribute assignment, atomic in CPython) never mixes a
new critic with old thresholds, and a batch in progress finishes with the champion it started with.

``load_champion`` reads the registry's champion (critic artifact, hash-checked by the registry, and thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from critic.base import CriticInput
from critic.persist import load_critic
from critic.registry import CriticRegistry
from critic.thresholds import SliceThresholds
from schemas.risk import SliceKey


class AcceptanceCritic(Protocol):
    """What scoring needs of a critic: column 1 of ``predict_proba`` is P(accept) (every ``critic`` is one)."""

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray: ...


class ChampionError(RuntimeError):
    """The registry has no usable champion (none promoted, or one without thresholds)."""


@dataclass(frozen=True, slots=True)
class Champion:
    """A critic, the thresholds fitted on its scores, and its registry version (None: not from a registry)."""

    critic: AcceptanceCritic
    thresholds: SliceThresholds
    version: str | None = None


class ChampionHolder:
    """The champion one process uses. ``current`` is read lock-free; ``swap`` replaces it in one assignment.

    It is also a ``ThresholdSource`` (the current champion's thresholds), so a router built on it follows swaps."""

    def __init__(self, champion: Champion) -> None:
        self._current = champion

    @property
    def current(self) -> Champion:
        return self._current

    def swap(self, champion: Champion) -> Champion:
        """Put ``champion`` in use; returns the one it replaced."""
        previous, self._current = self._current, champion
        return previous

    def threshold_for(self, slice_key: SliceKey, /) -> float | None:
        return self._current.thresholds.threshold_for(slice_key)


def load_champion(registry: CriticRegistry | str | Path, version: str | None = None) -> Champion:
    """The registry's champion (or ``version``) loaded: its critic artifact and its thresholds. Raises
    ChampionError when there is none or it has no thresholds (it could not gate anything), RegistryError for a
    damaged registry or artifact."""
    registry = registry if isinstance(registry, CriticRegistry) else CriticRegistry(registry)
    version = version or registry.champion()
    if version is None:
        raise ChampionError(f"{registry.root}: no champion critic (autopilot critic retrain, or critic promote)")
    thresholds = registry.thresholds(version)
    if thresholds is None:
        raise ChampionError(f"{registry.root}: the critic {version!r} has no thresholds; it cannot gate actions")
    return Champion(load_critic(registry.artifact_path(version)), SliceThresholds.from_dict(thresholds), version)
