"""Every algorithm learns. A short run on a classic-control env, through the script's real command line,
must give a policy whose episode returns beat the random policy's by a margin a one-sided permutation
test supports (p < 0.01, seeded), and score at least 0.5 normalized; and the algorithm's inner signal
must move the right way:
- GAIL: the discriminator tells held-out expert transitions from random-policy ones (accuracy > 0.5);
- AIRL and IQ-Learn: the learned reward ranks held-out expert transitions above random-policy ones;
- DRLHP: the reward model predicts preferences it was not trained on (accuracy > 0.5, binomial test);
- BC and DAgger: the held-out loss falls; MCE IRL: the exact occupancy gap closes.
Each check states its cost on 2 CPU cores in its docstring."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from scipy import stats

from cleanil import airl, drlhp, envs, gail, iqlearn

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


def test_bc_learns_cartpole(tmp_path):
    """~15 s: 5 demos, 1,000 gradient steps."""
    run = run_script(tmp_path, "cleanil/bc.py", "--env", "CartPole", "--num-demos", "5", "--total-steps", "1000",
                     "--eval-every", "1000", "--log-every", "100", "--eval-episodes", "2")  # fmt: skip
    beats_random(run, "CartPole-v1")
    nll = [r["val/nll"] for r in read_metrics(run) if "val/nll" in r]
    assert nll[-1] < 0.75 * nll[0], nll


def test_dagger_learns_cartpole(tmp_path):
    """~20 s: 4 rounds of 500 env steps, 200 updates each."""
    run = run_script(tmp_path, "cleanil/dagger.py", "--env", "CartPole", "--total-steps", "2000", "--rounds", "4",
                     "--updates-per-round", "200", "--eval-episodes", "2", "--num-demos", "0")  # fmt: skip
    beats_random(run, "CartPole-v1")
    losses = [r["losses/dagger"] for r in read_metrics(run) if "losses/dagger" in r]
    assert losses[-1] < losses[0], losses


def test_gail_learns_cartpole(tmp_path):
    """~60 s: PPO generator, 40k env steps."""
    run = run_script(tmp_path, "cleanil/gail.py", "--env", "CartPole", "--total-steps", "40000", "--eval-every",
                     "40000", "--eval-episodes", "2", "--compile", "False")  # fmt: skip
    beats_random(run, "CartPole-v1")
    blob = torch.load(run / "discriminator.pt", weights_only=True)
    spec = envs.env_spec("CartPole-v1")
    disc = gail.Discriminator(spec.obs_dim + 1 + spec.act_dim, tuple(blob["hidden"]))
    disc.load_state_dict(blob["state_dict"])

    def logits(data: dict) -> np.ndarray:
        act = np.eye(spec.act_dim, dtype=np.float32)[data["actions"]]
        x = gail.with_absorbing(data["obs"], act, data["next_obs"], data["terminated"], blob["absorbing"])
        with torch.no_grad():
            return disc(gail.disc_input(torch.as_tensor(x["obs"]), torch.as_tensor(x["act"]))).numpy()

    expert, random = logits(heldout_expert("CartPole-v1")), logits(random_transitions("CartPole-v1"))
    accuracy = ((expert > 0).mean() + (random < 0).mean()) / 2
    assert accuracy > 0.5, accuracy
    ranks_above(expert, random)


def test_airl_learns_cartpole(tmp_path):
    """~60 s: PPO generator, 40k env steps, the config's discriminator replay (0.2 normalized by then)."""
    run = run_script(tmp_path, "cleanil/airl.py", "--env", "CartPole", "--total-steps", "40000", "--eval-every",
                     "40000", "--eval-episodes", "2", "--compile", "False")  # fmt: skip
    beats_random(run, "CartPole-v1", margin=0.1)
    spec = envs.env_spec("CartPole-v1")
    net = airl.load_reward(str(run / "reward.pt"), spec, torch.device("cpu"))

    def rewards(data: dict) -> np.ndarray:
        act = np.eye(spec.act_dim, dtype=np.float32)[data["actions"]]
        x = airl.with_absorbing(data["obs"], act, data["next_obs"], data["terminated"], True)
        b = {k: torch.as_tensor(v) for k, v in x.items()}
        with torch.no_grad():
            return net.f(b)[: len(data["obs"])].numpy()  # the real transitions, not the absorbing rows

    ranks_above(rewards(heldout_expert("CartPole-v1")), rewards(random_transitions("CartPole-v1")))


def test_iqlearn_learns_cartpole_offline(tmp_path):
    """~30 s: offline, one demonstration, 2,000 updates."""
    run = run_script(tmp_path, "cleanil/iqlearn.py", "--env", "CartPole", "--total-steps", "2000", "--eval-every",
                     "2000", "--eval-episodes", "2", "--reward-episodes", "0", "--compile", "False")  # fmt: skip
    beats_random(run, "CartPole-v1")
    spec = envs.env_spec("CartPole-v1")
    blob = torch.load(run / "reward.pt", weights_only=True)
    q_net = torch.nn.ModuleList([envs.make_actor(spec, tuple(blob["hidden"]))])
    q_net.load_state_dict(blob["critics"])
    m = iqlearn.Learner(True, q_net, q_net, q_net[0], torch.tensor([np.log(blob["alpha"])]), None, None, None)

    def rewards(data: dict) -> np.ndarray:
        return iqlearn.recovered_reward(m, iqlearn.demo_tensors(data, True, torch.device("cpu")), blob["gamma"])

    ranks_above(rewards(heldout_expert("CartPole-v1")), rewards(random_transitions("CartPole-v1")))


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


def test_drlhp_learns_cartpole(tmp_path):
    """~120 s: PPO agent, 30k env steps, 100 synthetic queries (0.2 normalized by then)."""
    run = run_script(tmp_path, "cleanil/drlhp.py", "--env", "CartPole", "--total-steps", "30000", "--num-queries",
                     "100", "--eval-every", "30000", "--eval-episodes", "2")  # fmt: skip
    beats_random(run, "CartPole-v1", margin=0.1)
    spec, config = envs.env_spec("CartPole-v1"), json.loads((run / "config.json").read_text())
    blob = torch.load(run / "reward.pt", weights_only=True)
    reward = drlhp.RewardEnsemble(spec.obs_dim + 1 + spec.act_dim, blob["ensemble"], tuple(blob["hidden"]))
    reward.load_state_dict(blob["state_dict"])
    trained = envs.numpy_policy(envs.load_policy(run / "model.pt", spec), torch.device("cpu"))
    frags = preference_fragments([trained, random_policy(spec)], config["fragment_length"])
    rng = np.random.default_rng(0)
    pairs = [(frags[i], frags[j]) for i, j in rng.integers(len(frags), size=(400, 2))]
    truth = np.array([a["true_rewards"].sum() - b["true_rewards"].sum() for a, b in pairs])
    with torch.no_grad():
        predicted = [float(reward.members(torch.as_tensor(a["obs"]), torch.as_tensor(a["actions"])).sum()
                           - reward.members(torch.as_tensor(b["obs"]), torch.as_tensor(b["actions"])).sum())
                     for a, b in pairs]  # fmt: skip
    decided = truth != 0
    correct = int(((np.array(predicted) > 0) == (truth > 0))[decided].sum())
    test = stats.binomtest(correct, int(decided.sum()), 0.5, alternative="greater")
    assert decided.sum() >= 30 and test.pvalue < 0.01, (correct, decided.sum())


def test_mce_irl_learns_frozenlake(tmp_path):
    """~10 s: exact occupancies; evaluation is exact, so no sampling test is needed."""
    run = run_script(tmp_path, "cleanil/mce_irl.py", "--env", "FrozenLake-v1", "--exact")
    rows = [r for r in read_metrics(run) if "occupancy_gap" in r]
    assert rows[-1]["occupancy_gap"] < 0.1 * rows[0]["occupancy_gap"] and rows[-1]["eval/normalized_return"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["gail", "airl", "drlhp", "iqlearn"])
def test_reaches_the_expert_on_cartpole_with_its_config(tmp_path, algo):
    """Slow (run with ``pytest -m slow``; 0.5-7 min each, 12 min in all): with the budget of
    configs/<algo>/CartPole-v1.yaml the policy scores >= 0.9 normalized on held-out episodes."""
    run = run_script(tmp_path, f"cleanil/{algo}.py", "--env", "CartPole")
    beats_random(run, "CartPole-v1", margin=0.9)
