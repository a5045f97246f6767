"""GAIL, and the pieces AIRL shares with it: reward forms, discriminator loss, gradient penalty,
absorbing states, CLI smoke runs and bad input."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, heldout_expert, random_transitions, ranks_above, run_script

from cleanil import airl, envs, gail, nets

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_reward_forms_hand_computed():
    logits = torch.tensor([0.0, LN3, -LN3])  # D = 0.5, 0.75, 0.25
    assert gail.policy_reward(logits, "logit").tolist() == pytest.approx([0.0, LN3, -LN3])  # log D - log(1 - D)
    assert gail.policy_reward(logits, "gail").tolist() == pytest.approx([LN2, math.log(4.0), -math.log(0.75)])
    assert gail.policy_reward(logits, "log_d").tolist() == pytest.approx([-LN2, math.log(0.75), math.log(0.25)])


@pytest.mark.parametrize("mod", [gail, airl])
def test_discriminator_loss_hand_computed(mod):
    # -log D(expert) - log(1 - D(policy)) with D(expert) = 0.5, D(policy) = 0.75
    loss = mod.discriminator_loss(torch.tensor([0.0]), torch.tensor([LN3]))
    assert loss.item() == pytest.approx(LN2 + math.log(4.0))


@pytest.mark.parametrize("mod", [gail, airl])
def test_gradient_penalty_of_a_linear_discriminator(mod):
    """d(z) = w . z has gradient w everywhere: the penalty is (||w|| - 1)^2 whatever the interpolates."""
    net = torch.nn.Linear(2, 1, bias=False)
    z_e, z_pi = torch.randn(64, 2), torch.randn(64, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 4.0]]))
    assert mod.gradient_penalty(partial(mod.tanh_mlp_input_grad, net), z_e, z_pi).item() == pytest.approx(16.0)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.6, 0.8]]))
    assert mod.gradient_penalty(partial(mod.tanh_mlp_input_grad, net), z_e, z_pi).item() == pytest.approx(
        0.0, abs=1e-10
    )
    # differentiable: the penalty's gradient reaches the discriminator's weights
    tanh_net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    mod.gradient_penalty(partial(mod.tanh_mlp_input_grad, tanh_net), z_e, z_pi).backward()
    assert tanh_net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mod", [gail, airl])
def test_hand_written_input_gradient_matches_autograd(mod):
    torch.manual_seed(0)
    net = nets.mlp(5, 1, (16, 8), torch.nn.Tanh)
    z = torch.randn(32, 5, requires_grad=True)
    value, grad = mod.tanh_mlp_input_grad(net, z)
    (expected,) = torch.autograd.grad(net(z).sum(), z)
    assert torch.allclose(value, net(z).squeeze(-1)) and torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("state_only", [False, True])
def test_airl_shaped_reward_gradient_matches_autograd(state_only):
    torch.manual_seed(0)
    net = airl.RewardNet(4, 2, (16, 16), state_only, gamma=0.9)
    z = torch.randn(32, 10, requires_grad=True)  # [s (4), a (2), s' (4)]
    value, grad = net.f_and_grad(z)
    (expected,) = torch.autograd.grad(net.f_of_z(z).sum(), z)
    assert torch.allclose(value, net.f_of_z(z)) and torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("mod", [gail, airl])
def test_absorbing_transitions(mod):
    obs, next_obs = np.arange(6.0).reshape(3, 2), np.arange(6.0).reshape(3, 2) + 10
    act, term = np.ones((3, 1)), np.array([False, True, False])
    out = mod.with_absorbing(obs, act, next_obs, term, absorbing=True)
    s_abs = [0.0, 0.0, 1.0]
    assert out["obs"].tolist() == [[0, 1, 0], [2, 3, 0], [4, 5, 0], s_abs]
    assert out["next_obs"].tolist() == [[10, 11, 0], s_abs, [14, 15, 0], s_abs]
    assert out["act"].tolist() == [[1], [1], [1], [0]]
    assert out["mask"].tolist() == [1, 1, 1, 1]  # bootstrapped, never masked
    plain = mod.with_absorbing(obs, act, next_obs, term, absorbing=False)
    assert len(plain["obs"]) == 3 and plain["mask"].tolist() == [1, 0, 1] and not plain["obs"][:, -1].any()


def test_gail_discriminator_sees_no_action_in_the_absorbing_state():
    obs = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    x = gail.disc_input({"obs": obs, "act": torch.tensor([[0.5], [0.5]]), "next_obs": obs + 1})
    assert x.tolist() == [[1, 2, 0, 0.5], [0, 0, 1, 0]]


def test_gaifo_discriminator_sees_the_state_transition_and_never_the_action():
    """GAIfO's input is [s, flag, s', flag']: a terminating (s, s_abs) and the absorbing loop (s_abs, s_abs)
    included; changing the actions changes nothing."""
    obs = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    next_obs = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    b = {"obs": obs, "act": torch.tensor([[0.5], [-0.5], [0.0]]), "next_obs": next_obs}
    x = gail.disc_input(b, observation_only=True)
    assert x.tolist() == [[1, 2, 0, 3, 4, 0], [3, 4, 0, 0, 0, 1], [0, 0, 1, 0, 0, 1]]
    assert torch.equal(gail.disc_input(b | {"act": torch.full((3, 1), 9.0)}, observation_only=True), x)
    disc = gail.Discriminator(6, (8,), observation_only=True)  # the reward reads the same input
    assert torch.equal(gail.discriminator_reward(disc, b, "logit"), disc(x))


@pytest.mark.parametrize("mod", [gail, airl])
def test_critic_target_bootstraps_through_the_absorbing_state(mod):
    torch.manual_seed(0)
    actor = nets.TanhGaussianActor(2, 1, np.array([-1.0]), np.array([1.0]), (8,))
    targets = nets.TwinQNetwork(3, 1, (8,))
    s_abs = torch.tensor([[0.0, 0.0, 1.0]])
    reward, gamma = torch.tensor([0.5]), 0.9
    y = mod.sac_critic_target(s_abs, reward, torch.ones(1), actor, targets, torch.tensor(0.2), gamma)
    zero = torch.zeros(1, 1)
    q_abs = torch.min(*targets(s_abs, zero))
    assert y.item() == pytest.approx((reward + gamma * q_abs).item())  # Q(s_abs, 0), no entropy term
    masked = mod.sac_critic_target(s_abs, reward, torch.zeros(1), actor, targets, torch.tensor(0.2), gamma)
    assert masked.item() == pytest.approx(0.5)


TINY = ("--num-demos", "2", "--eval-episodes", "2", "--hidden", "32", "32", "--disc-hidden", "16", "16")


def test_sac_generator_smoke_with_absorbing_states(tmp_path):
    """Hopper under random actions falls within tens of steps: absorbing rows reach the replay buffer."""
    res = run_cli("cleanil/gail.py", "--env", "Hopper", "--total-steps", "600", "--learning-starts", "300",
                  "--eval-every", "600", "--log-every", "100", "--batch-size", "64", "--run-dir", str(tmp_path),
                  *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    rows = read_metrics(run)
    losses = [r for r in rows if "losses/discriminator" in r]
    assert [r["global_step"] for r in losses] == [400, 500, 600]  # updates ran after learning starts
    assert all(np.isfinite(r["losses/critic"]) and np.isfinite(r["losses/gradient_penalty"]) for r in losses)
    assert max(r["replay/absorbing_share"] for r in losses) > 0
    assert "eval/normalized_return" in rows[-1]
    assert (run / "model.pt").exists() and (run / "discriminator.pt").exists()


def test_sac_generator_with_a_weaker_discriminator(tmp_path):
    """Raw discriminator inputs and an update every third env step: the discriminator steps 1 in 3."""
    res = run_cli("cleanil/gail.py", "--env", "Pendulum", "--total-steps", "400", "--learning-starts", "100",
                  "--eval-every", "400", "--log-every", "100", "--batch-size", "64", "--no-disc-standardize",
                  "--disc-every", "3", "--absorbing-weight", "1", "--run-dir", str(tmp_path), *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = only_run_dir(tmp_path)
    blob = torch.load(run / "discriminator.pt", weights_only=True)
    assert torch.equal(blob["state_dict"]["norm.mean"], torch.zeros_like(blob["state_dict"]["norm.mean"]))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert int(state["objects"]["disc_opt"]["t"]) == 100  # the optimizer's step count: steps 102, 105, ..., 399


@pytest.mark.parametrize("mod", [gail, airl])
def test_expert_rows_replace_the_first_replay_rows(mod):
    replay = {k: torch.zeros(6, 2) for k in ("obs", "act", "next_obs")} | {"mask": torch.zeros(6)}
    replay["obs"][:, 0] = torch.arange(6.0)  # replay rows 0..5
    expert = {k: torch.ones(4, 2) for k in ("obs", "act", "next_obs")} | {"mask": torch.ones(4)}
    expert["obs"][:, 0] = torch.arange(10.0, 14.0)  # expert rows 10..13
    mixed = mod.with_expert_rows(replay, expert, 2)
    assert mixed["obs"].shape == (6, 2) and mixed["obs"][:4, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert set(mixed["obs"][4:, 0].tolist()) <= {10.0, 11.0, 12.0, 13.0}
    assert mixed["mask"].tolist() == [0, 0, 0, 0, 1, 1] and mixed["act"][4:].eq(1).all()


@pytest.mark.parametrize("script", ["cleanil/gail.py", "cleanil/airl.py"])
def test_sac_generator_with_expert_rows_in_its_minibatch(tmp_path, script):
    res = run_cli(script, "--env", "Hopper", "--total-steps", "400", "--learning-starts", "200",
                  "--eval-every", "400", "--log-every", "100", "--batch-size", "64", "--expert-ratio", "0.5",
                  "--critic-layernorm", "--run-dir", str(tmp_path), *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = [r for r in read_metrics(only_run_dir(tmp_path)) if "losses/critic" in r]
    assert [r["global_step"] for r in rows] == [300, 400] and all(np.isfinite(r["losses/actor"]) for r in rows)
    critics = torch.load(only_run_dir(tmp_path) / "checkpoint.pt", weights_only=False)["objects"]["critics"]
    assert any(k.startswith("ln_scales.") for k in critics)  # --critic-layernorm built the normalized critics
    bad = run_cli(script, "--env", "Pendulum", "--expert-ratio", "1", "--run-dir", str(tmp_path / "b"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: --expert-ratio must lie in [0, 1), got 1.0"]


@pytest.mark.parametrize("script", ["cleanil/gail.py", "cleanil/airl.py"])
@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_ppo_generator_smoke(tmp_path, script, env):
    """PPO trains on the discriminator's logit: the rollout's mean reward tracks the mean logit the last
    discriminator update saw on the same rollout (d for GAIL's default reward, f - log pi for AIRL)."""
    res = run_cli(script, "--env", env, "--generator", "ppo", "--total-steps", "1024", "--num-envs", "4",
                  "--num-steps", "64", "--update-epochs", "2", "--eval-every", "1024", "--run-dir", str(tmp_path),
                  *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path))
    updates = [r for r in rows if "losses/policy" in r]
    assert [r["global_step"] for r in updates] == [256, 512, 768, 1024]
    assert all(np.isfinite(r["losses/discriminator"]) for r in updates)
    reward, logit = (np.array([r[k] for r in updates]) for k in ("reward_mean", "disc/policy_logit"))
    assert np.abs(reward - logit).sum() < 0.5 * np.abs(logit).sum() + 0.05 * len(updates), (reward, logit)
    assert "eval/return" in rows[-1]


def test_bad_input_gets_one_line(tmp_path):
    res = run_cli("cleanil/gail.py", "--env", "CartPole", "--generator", "sac", "--run-dir", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: --generator sac needs continuous actions; CartPole-v1 has discrete ones: use ppo"
    ]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    missing = run_cli("cleanil/gail.py", "--env", "Pendulum", "--demos", str(tmp_path / "none.npz"))
    assert missing.returncode == 2 and "none.npz" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("mod", [gail, airl])
def test_sampled_expert_rows_are_whole_transitions(mod):
    """Every array of a sampled batch holds the same rows: (s, a, s') stays one transition."""
    obs = torch.arange(50.0).unsqueeze(-1)
    data = {"obs": obs, "act": 2 * obs, "next_obs": obs + 1, "mask": torch.ones(50)}
    batch = mod.sample_rows(data, 256)
    assert torch.equal(batch["act"], 2 * batch["obs"]) and torch.equal(batch["next_obs"], batch["obs"] + 1)
    assert len(batch["obs"].unique()) > 40  # drawn across the data, not one row repeated


def test_discriminator_reward_is_the_chosen_form_of_the_logit():
    """What both generators train on: for --reward logit the discriminator's logit itself, sign included."""
    torch.manual_seed(0)
    disc = gail.Discriminator(4, (8,))
    b = {"obs": torch.cat([torch.randn(16, 2), torch.zeros(16, 1)], 1), "act": torch.randn(16, 1)}
    d = disc(gail.disc_input(b))
    assert torch.equal(gail.discriminator_reward(disc, b, "logit"), d)
    assert torch.allclose(gail.discriminator_reward(disc, b, "gail"), -torch.log(1 - torch.sigmoid(d)), atol=1e-6)
    assert torch.allclose(gail.discriminator_reward(disc, b, "log_d"), torch.log(torch.sigmoid(d)), atol=1e-6)


@pytest.mark.parametrize("mod", [gail, airl])
def test_ppo_value_after_a_termination_is_the_absorbing_states(mod):
    next_value, term, r_abs = torch.tensor([[2.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([-0.5])
    v = mod.next_state_value(next_value, term, r_abs, 0.9, absorbing=True)
    assert torch.allclose(v, torch.tensor([[2.0, -5.0]]))  # r(s_abs) / (1 - gamma) = -0.5 / 0.1
    masked = mod.next_state_value(next_value, term, r_abs, 0.9, absorbing=False)
    assert torch.allclose(masked, torch.tensor([[2.0, 0.0]]))


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
            return disc(gail.disc_input({k: torch.as_tensor(v) for k, v in x.items()})).numpy()

    expert, random = logits(heldout_expert("CartPole-v1")), logits(random_transitions("CartPole-v1"))
    accuracy = ((expert > 0).mean() + (random < 0).mean()) / 2
    assert accuracy > 0.5, accuracy
    ranks_above(expert, random)
