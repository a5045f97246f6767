"""A user's own continuous-control env, as a user would bring it: ``--env tests.point_goal:PointGoal-v0``.

A point mass on a plane is pushed toward a goal. Observations are a Dict (position, velocity, goal), which
cleanil flattens; actions are a force in [-max_force, max_force]^2 (``--env-kwargs '{"max_force": 0.5}'``).
Reward: minus the distance to the goal; 50 steps an episode, no termination. Renders as a small RGB image.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PointGoalEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, max_force: float = 1.0, render_mode: str | None = None):
        self.max_force, self.render_mode = float(max_force), render_mode
        self.observation_space = spaces.Dict({
            "position": spaces.Box(-2.0, 2.0, (2,), np.float32),
            "velocity": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "goal": spaces.Box(-1.0, 1.0, (2,), np.float32),
        })  # fmt: skip
        self.action_space = spaces.Box(-self.max_force, self.max_force, (2,), np.float32)

    def _obs(self) -> dict:
        return {"position": self.pos.astype(np.float32), "velocity": self.vel.astype(np.float32),
                "goal": self.goal.astype(np.float32)}  # fmt: skip

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.vel = np.zeros(2)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        force = np.clip(np.asarray(action, dtype=np.float64), -self.max_force, self.max_force)
        self.vel = 0.8 * self.vel + 0.2 * force
        self.pos = np.clip(self.pos + 0.2 * self.vel, -2, 2)
        return self._obs(), -float(np.linalg.norm(self.pos - self.goal)), False, False, {}

    def render(self) -> np.ndarray:
        image = np.full((64, 64, 3), 255, np.uint8)
        for point, color in ((self.goal, (0, 160, 0)), (self.pos, (200, 0, 0))):
            x, y = np.clip(((point + 2) / 4 * 63).round().astype(int), 2, 61)
            image[y - 2 : y + 3, x - 2 : x + 3] = color
        return image


gym.register("PointGoal-v0", entry_point=PointGoalEnv, max_episode_steps=50)
