"""Gatherers and envs for the DRLHP tests. Importing this module (as ``--gatherer
tests.preference_gatherers:...`` does) registers two envs whose true reward is NaN at every step:
an agent that read the env's reward would get NaN losses."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class NaNReward(gym.RewardWrapper):
    def reward(self, reward: float) -> float:
        return float("nan")


for name, base in (("NaNRewardPendulum-v0", "Pendulum-v1"), ("NaNRewardCartPole-v0", "CartPole-v1")):
    if name not in gym.registry:
        gym.register(name, entry_point=lambda base=base, **kwargs: NaNReward(gym.make(base, **kwargs)))


def prefer_first_coordinate(pairs: list) -> np.ndarray:
    """Prefers the fragment whose first observation coordinate sums higher; never reads rewards."""
    return np.array([float(a["obs"][:, 0].sum() > b["obs"][:, 0].sum()) for a, b in pairs])


def wrong_shape(pairs: list) -> np.ndarray:
    return np.ones(len(pairs) + 1)
