"""Helpers of the learning checks in tests/test_<algo>.py (each named test_<algo>_learns_...).

Every algorithm learns. A short run on a classic-control env, through the script's real command line,
must give a policy whose episode returns beat the random policy's by a margin a one-sided permutation
test supports (p < 0.01, seeded), and score at least 0.5 normalized; and the algorithm's inner signal
must move the right way:
- GAIL: the discriminator tells held-out expert transitions from random-policy ones (accuracy > 0.5);
- AIRL and IQ-Learn: the learned reward ranks held-out expert transitions above random-policy ones;
- DRLHP: the reward model predicts preferences it was not trained on (accuracy > 0.5, binomial test);
- BC and DAgger: the held-out loss falls; MCE IRL: the exact occupancy gap closes.
Each check states its cost on 2 CPU cores in its docstring."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from conftest import only_run_dir, run_cli
from scipy import stats

from cleanil import drlhp, envs

EPISODES, SEED = 20, 4_000_000  # reset seeds apart from demos' (1e6), evaluations' (2e6) and experts' (3e6)


def random_policy(spec: envs.EnvSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    if spec.discrete:
        return lambda obs: rng.integers(spec.act_dim, size=len(obs))
    return lambda obs: rng.uniform(spec.action_low, spec.action_high, size=(len(obs), spec.act_dim)).astype(np.float32)


def beats_random(run, env_id: str, margin: float = 0.5) -> None:
    """The saved policy's returns against the random policy's: p < 0.01, and at least ``margin`` normalized."""
    spec = envs.env_spec(env_id)
    policy = envs.numpy_policy(envs.load_policy(run / "model.pt", spec), torch.device("cpu"))
    trained = envs.rollout(policy, env_id, EPISODES, SEED)["returns"]
    random = envs.rollout(random_policy(spec), env_id, EPISODES, SEED)["returns"]
    test = stats.permutation_test((trained, random), lambda x, y: x.mean() - y.mean(), alternative="greater",
                                  n_resamples=9999, rng=np.random.default_rng(0))  # fmt: skip
    assert test.pvalue < 0.01, (trained.mean(), random.mean(), test.pvalue)
    assert envs.normalized_score(float(trained.mean()), env_id) >= margin, trained.mean()


def random_transitions(env_id: str, episodes: int = 10) -> dict:
    spec = envs.env_spec(env_id)
    return envs.rollout(random_policy(spec, 1), env_id, episodes, SEED + 10_000, record=True)["transitions"]


def ranks_above(expert_scores: np.ndarray, random_scores: np.ndarray) -> None:
    """Expert transitions score higher than random ones: rank-sum test p < 0.01, AUC > 0.5."""
    test = stats.mannwhitneyu(expert_scores, random_scores, alternative="greater")
    auc = test.statistic / (len(expert_scores) * len(random_scores))
    assert test.pvalue < 0.01 and auc > 0.5, (auc, test.pvalue)


def heldout_expert(env_id: str) -> dict:
    return envs.load_demos(env_id, 5, seed=7)  # the shipped expert's episodes on other reset seeds


def run_script(tmp_path, script: str, *flags: str):
    res = run_cli(script, *flags, "--run-dir", str(tmp_path), "--seed", "1", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return only_run_dir(tmp_path)


def preference_fragments(policies: list, length: int, steps: int = 600) -> list[dict]:
    """CartPole fragments cut as drlhp.py cuts them, from each policy in turn (held out: never labelled)."""
    env, out = gym.make("CartPole-v1"), []
    for k, policy in enumerate(policies):
        cutter, (obs, _) = drlhp.FragmentCutter(1, length, 4, 2), env.reset(seed=SEED + k)
        for _ in range(steps):
            action = int(policy(obs[None])[0])
            next_obs, reward, term, trunc, _ = env.step(action)
            out += cutter.add(0, obs, np.eye(2, dtype=np.float32)[action], float(reward), term, trunc)
            obs = env.reset()[0] if term or trunc else next_obs
    return out
