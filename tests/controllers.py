"""Hand-written experts for DAgger's ``--expert module:function`` tests."""

from __future__ import annotations

import numpy as np


def cartpole(obs: np.ndarray) -> int:
    """Push toward the side the pole is falling to: balances CartPole-v1 for 500 steps."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def always_right(obs: np.ndarray) -> int:
    return 1


def wrong_shape(obs: np.ndarray) -> np.ndarray:
    return np.zeros(3)


not_callable = 42
