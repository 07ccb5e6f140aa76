"""``load_critic``: load any saved critic, dispatching on the ``kind`` its ``critic.json`` names.

The directory format (writer and reader) is ``critic.artifact``'s; the kinds import that module, and this one
imports the kinds, only when a directory of that kind is loaded.
"""

from __future__ import annotations

from pathlib import Path

from critic.artifact import read_critic_meta
from critic.base import Critic

KINDS = ("feature", "confidence", "generative", "calibrated")


def load_critic(path: str | Path) -> Critic:
    """Load any saved critic, dispatching on the ``kind`` in its ``critic.json``."""
    kind = read_critic_meta(path)["kind"]
    # Imported here: the heavier kinds (the generative critic pulls in torch) should cost nothing to a caller
    # that loads a feature critic.
    if kind == "feature":
        from critic.feature_critic import FeatureCritic

        return FeatureCritic.load(path)
    if kind == "confidence":
        from critic.confidence import PolicyConfidenceCritic

        return PolicyConfidenceCritic.load(path)
    if kind == "generative":
        from critic.generative import GenerativeCritic

        return GenerativeCritic.load(path)
    if kind == "calibrated":
        from critic.calibration import CalibratedCritic

        return CalibratedCritic.load(path, load_base=load_critic)
    raise ValueError(f"{path}: unknown critic kind {kind!r} (known: {', '.join(KINDS)})")
