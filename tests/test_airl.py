"""AIRL: the logit formula, the shaped reward net, log pi of stored actions, a SAC smoke run, reward
transfer and bad input. Losses, gradient penalty, absorbing states and the PPO smoke runs are
shared with GAIL and tested in test_gail.py for both files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, heldout_expert, random_transitions, ranks_above, run_script

from cleanil import airl, envs, nets


def test_airl_logit_is_log_odds_of_d():
    f, pi = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.5, 0.25, 0.9])
    d = f.exp() / (f.exp() + pi)  # D = exp(f) / (exp(f) + pi(a|s))
    assert airl.airl_logit(f, pi.log()).tolist() == pytest.approx((d.log() - (1 - d).log()).tolist(), rel=1e-5)
    assert airl.airl_logit(torch.tensor([1.0]), torch.tensor([math.log(0.5)])).item() == pytest.approx(1 + math.log(2))
    # the tempered form used with SAC: D = exp(f) / (exp(f) + pi^alpha), logit f - alpha log pi
    alpha = 0.1
    d = f.exp() / (f.exp() + pi**alpha)
    assert airl.airl_logit(f, alpha * pi.log()).tolist() == pytest.approx((d.log() - (1 - d).log()).tolist(), rel=1e-5)


@pytest.mark.parametrize("state_only", [False, True])
def test_reward_net_is_g_plus_shaping(state_only):
    torch.manual_seed(0)
    net = airl.RewardNet(3, 2, (8,), state_only, gamma=0.9)
    obs, next_obs = torch.randn(5, 3), torch.randn(5, 3)
    obs[:, -1], next_obs[:, -1] = 0, 0
    act, mask = torch.randn(5, 2), torch.tensor([1.0, 1, 0, 1, 0])
    z = net.z(obs, act, next_obs)
    g = net.g(torch.cat([obs] if state_only else [obs, act], -1)).squeeze(-1)  # identity normalizers
    h = lambda s: net.h(s).squeeze(-1)  # noqa: E731
    expected = g + 0.9 * mask * h(next_obs) - h(obs)  # f = g + gamma mask h(s') - h(s)
    assert torch.allclose(net.f_of_z(z, mask), expected, atol=1e-6)
    assert torch.allclose(net.reward(obs, act), g, atol=1e-6)
    other = net.reward(obs, torch.randn(5, 2))
    assert torch.allclose(other, g) == state_only  # g(s) ignores the action
    s_abs = torch.tensor([[0.0, 0.0, 1.0]])  # the absorbing state's action is zeroed
    assert torch.equal(net.z(s_abs, torch.ones(1, 2), s_abs), net.z(s_abs, -torch.ones(1, 2), s_abs))


def test_log_pi_of_stored_actions():
    torch.manual_seed(0)
    actor = nets.TanhGaussianActor(2, 2, np.array([-2.0, -1.0]), np.array([2.0, 1.0]), (16,))
    obs = torch.randn(6, 2)
    a, logp = actor.sample(obs)
    aug = torch.cat([obs, torch.zeros(6, 1)], 1)
    assert torch.allclose(airl.log_pi(actor, aug, a, discrete=False), logp, atol=1e-3)
    aug[0, -1] = 1  # the absorbing state has a single action: log pi = 0
    assert airl.log_pi(actor, aug, a, discrete=False)[0].item() == 0.0
    cat = nets.CategoricalActor(2, 3, (16,))
    onehot = torch.eye(3)[torch.tensor([0, 2, 1, 1, 0, 2])]
    expected = torch.log_softmax(cat(obs), -1)[torch.arange(6), torch.tensor([0, 2, 1, 1, 0, 2])]
    assert torch.allclose(airl.log_pi(cat, aug, onehot, discrete=True)[1:], expected[1:])


def test_log_pi_floor_at_the_uniform_policy():
    torch.manual_seed(0)
    actor = nets.TanhGaussianActor(2, 2, np.array([-2.0, -1.0]), np.array([2.0, 1.0]), (16,))
    obs = torch.cat([torch.randn(3, 2), torch.zeros(3, 1)], 1)
    far = torch.tensor([[2.0, -1.0], [-2.0, 1.0], [1.999, 0.999]])  # at the bounds: deep in the tails
    uniform = -math.log(4.0 * 2.0)  # the uniform density on [-2, 2] x [-1, 1]
    raw = airl.log_pi(actor, obs, far, discrete=False)
    assert (raw < uniform).all()
    assert airl.log_pi(actor, obs, far, discrete=False, floor=uniform).tolist() == pytest.approx([uniform] * 3)
    a, logp = actor.sample(obs[:, :-1])  # the policy's own samples lie above the floor: unchanged
    assert (logp > uniform).all()
    assert torch.allclose(airl.log_pi(actor, obs, a, discrete=False, floor=uniform), logp, atol=1e-3)


TINY = ("--num-demos", "2", "--eval-episodes", "2", "--hidden", "32", "32", "--disc-hidden", "16", "16")
SAC_TINY = ("--total-steps", "600", "--learning-starts", "300", "--eval-every", "600", "--log-every", "100",
            "--batch-size", "64")  # fmt: skip


def test_sac_smoke_then_reward_transfer(tmp_path):
    res = run_cli("cleanil/airl.py", "--env", "Hopper", "--state-only", "--run-dir", str(tmp_path / "airl"),
                  *SAC_TINY, *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path / "airl")
    losses = [r for r in read_metrics(run) if "losses/discriminator" in r]
    assert [r["global_step"] for r in losses] == [400, 500, 600]
    assert all(np.isfinite(r["losses/critic"]) and np.isfinite(r["losses/gradient_penalty"]) for r in losses)
    assert max(r["replay/absorbing_share"] for r in losses) > 0
    assert (run / "model.pt").exists() and (run / "reward.pt").exists()
    # a fresh SAC on the saved reward: it learns (updates run) without any discriminator
    res = run_cli("cleanil/airl.py", "--env", "Hopper", "--reward-from", str(run / "reward.pt"),
                  "--run-dir", str(tmp_path / "transfer"), *SAC_TINY, *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path / "transfer"))
    assert [r["global_step"] for r in rows if "losses/critic" in r] == [400, 500, 600]
    assert not any("losses/discriminator" in r for r in rows)
    assert "eval/normalized_return" in rows[-1]
    # the same seed on the shaped f = g + gamma h(s') - h(s): identical but for the reward (the flag is not ignored)
    res = run_cli("cleanil/airl.py", "--env", "Hopper", "--reward-from", str(run / "reward.pt"), "--shaped-transfer",
                  "--run-dir", str(tmp_path / "shaped"), *SAC_TINY, *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    shaped = [r["reward_mean"] for r in read_metrics(only_run_dir(tmp_path / "shaped")) if "reward_mean" in r]
    plain = [r["reward_mean"] for r in rows if "reward_mean" in r]
    assert len(shaped) == len(plain) == 3 and all(np.isfinite(shaped)) and shaped != plain


def test_ppo_discriminator_replay_keeps_past_rollouts(tmp_path):
    """--disc-replay N: the discriminator samples from the last N policy transitions (absorbing rows included)
    across rollouts, and the replay is checkpointed with the run."""
    res = run_cli("cleanil/airl.py", "--env", "CartPole", "--total-steps", "768", "--num-envs", "4", "--num-steps",
                  "64", "--update-epochs", "1", "--eval-every", "768", "--disc-replay", "600", "--run-dir",
                  str(tmp_path), *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path))
    assert [r["global_step"] for r in rows if "losses/policy" in r] == [256, 512, 768]
    replay = torch.load(only_run_dir(tmp_path) / "checkpoint.pt", weights_only=False)["objects"]["disc_replay"]
    assert len(replay["data"]) == 600  # 3 rollouts of 256 transitions (and their absorbing rows), capped at 600
    assert replay["data"]["obs"].shape[1] == 5  # CartPole's 4 dimensions and the absorbing flag


def test_bad_input_gets_one_line(tmp_path):
    cases = [
        (("--env", "CartPole", "--generator", "sac"), "--generator sac needs continuous actions"),
        (("--env", "Pendulum", "--reward-from", str(tmp_path / "nope.pt")), "nope.pt: no such file"),
        (("--env", "CartPole", "--reward-from", str(tmp_path / "nope.pt")), "--reward-from trains SAC"),
    ]
    for flags, message in cases:
        res = run_cli("cleanil/airl.py", *flags, "--run-dir", str(tmp_path / "runs"))
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_disc_logit_is_f_minus_weighted_log_pi():
    """What the discriminator update scores, expert and policy alike: f(s, a, s') - w log pi(a|s)."""
    torch.manual_seed(0)
    net = airl.RewardNet(3, 1, (8,), state_only=False, gamma=0.9)
    actor = nets.TanhGaussianActor(2, 1, np.array([-1.0]), np.array([1.0]), (8,))
    x = {"obs": torch.cat([torch.randn(6, 2), torch.zeros(6, 1)], 1), "act": torch.rand(6, 1) * 1.8 - 0.9,
         "next_obs": torch.cat([torch.randn(6, 2), torch.zeros(6, 1)], 1), "mask": torch.ones(6)}  # fmt: skip
    z = net.z(x["obs"], x["act"], x["next_obs"])
    w = torch.tensor(0.3)
    expected = net.f_of_z(z, x["mask"]) - w * airl.log_pi(actor, x["obs"], x["act"], False)
    assert torch.allclose(airl.disc_logit(net, actor, x, z, w, False, None), expected)


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
