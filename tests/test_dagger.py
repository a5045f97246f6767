"""DAgger: beta schedules, losses, expert labels, aggregation, callable experts, CLI smoke and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_metrics, run_cli
from learning_checks import beats_random, run_script

from cleanil import dagger, envs

TINY = ("--total-steps", "300", "--rounds", "3", "--updates-per-round", "20", "--eval-episodes", "2",
        "--hidden", "32", "32")  # fmt: skip


def test_beta_schedules():
    linear = [dagger.beta_schedule("linear", i, 1.0, 4, 0.5) for i in range(6)]
    assert linear == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    exponential = [dagger.beta_schedule("exponential", i, 0.8, 4, 0.5) for i in range(4)]
    assert exponential == pytest.approx([0.8, 0.4, 0.2, 0.1])
    assert [dagger.beta_schedule("constant", i, 0.3, 4, 0.5) for i in range(3)] == [0.3, 0.3, 0.3]


def test_losses_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    assert dagger.dagger_loss_discrete(logits, torch.tensor([1, 0])).item() == pytest.approx(
        (-math.log(0.75) + math.log(2.0)) / 2
    )
    loss = dagger.dagger_loss_continuous(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([2.0, 1.0])
    )
    assert loss.item() == pytest.approx(0.25 + 1.0)


def test_labels_are_the_experts_and_every_round_is_kept(tmp_path):
    """With beta = 0 the learner acts, yet every stored action is the expert's label (always 1)."""
    data = tmp_path / "dagger.npz"
    res = run_cli("cleanil/dagger.py", "--env", "CartPole", "--expert", "tests.controllers:always_right",
                  "--beta-schedule", "constant", "--beta0", "0", "--save-dataset", str(data),
                  "--run-dir", str(tmp_path / "runs"), *TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path / "runs"))
    assert [r["dataset_size"] for r in rows] == [100, 200, 300]
    assert all(r["beta"] == 0.0 and r["expert_action_share"] == 0.0 for r in rows)
    saved = envs.load_demo_file(data, envs.env_spec("CartPole-v1"))  # a valid demo file
    assert len(saved["obs"]) == 300 and (saved["actions"] == 1).all()
    # the executed actions were the learner's: they do not all push right (states would drift one way)
    assert (saved["terminated"] | saved["truncated"]).sum() >= 3


def test_callable_expert_teaches_cartpole(tmp_path):
    res = run_cli("cleanil/dagger.py", "--env", "CartPole", "--expert", "tests.controllers:cartpole",
                  "--total-steps", "1500", "--rounds", "3", "--updates-per-round", "300",
                  "--eval-episodes", "3", "--run-dir", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    final = read_metrics(only_run_dir(tmp_path))[-1]
    assert final["eval/return"] > 150  # random scores ~22


def test_saved_dataset_reloads_as_demos(tmp_path):
    data = tmp_path / "d.npz"
    flags = ("--env", "Pendulum", *TINY)
    res = run_cli("cleanil/dagger.py", *flags, "--save-dataset", str(data), "--run-dir", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    res = run_cli(
        "cleanil/dagger.py", *flags, "--demos", str(data), "--num-demos", "2", "--run-dir", str(tmp_path / "b")
    )
    assert res.returncode == 0, res.stderr
    rows = read_metrics(only_run_dir(tmp_path / "b"))
    assert rows[0]["dataset_size"] == 200 + 100  # two saved 100-step episodes, then the first round
    assert rows[0]["losses/dagger"] != rows[-1]["losses/dagger"] and "eval/normalized_return" in rows[-1]


def test_saved_policy_as_expert(tmp_path):
    spec = envs.env_spec("Pendulum-v1")
    envs.save_policy(tmp_path / "p.pt", envs.load_expert("Pendulum-v1"), spec, (256, 256))
    fn = dagger.load_expert_fn(str(tmp_path / "p.pt"), spec)
    obs = np.array([1.0, 0.0, 0.5], np.float32)
    expected = envs.numpy_policy(envs.load_expert("Pendulum-v1"), torch.device("cpu"))(obs[None])[0]
    np.testing.assert_allclose(fn(obs), expected)


@pytest.mark.parametrize(
    "expert, needle",
    [
        ("no_colon", "expected a .pt policy file or module:function"),
        ("tests.no_such_module:act", "cannot import module 'tests.no_such_module'"),
        ("tests.controllers:nothing", "module 'tests.controllers' has no 'nothing'"),
        ("tests.controllers:not_callable", "'not_callable' is not callable"),
        ("tests.controllers:wrong_shape", "returned array([0., 0., 0.]); CartPole-v1 needs an int in [0, 2)"),
        ("missing.pt", "policy file missing.pt does not exist"),
    ],
)
def test_bad_expert_is_one_clear_error(tmp_path, expert, needle):
    with pytest.raises(envs.CleanILError, match=None) as err:
        dagger.main(dagger.Args(env="CartPole", expert=expert, run_dir=str(tmp_path), total_steps=10, rounds=1))
    assert needle in str(err.value)


def test_demos_with_a_zero_count_is_an_error(tmp_path):
    with pytest.raises(envs.CleanILError, match="--demos needs --num-demos >= 1"):
        dagger.main(dagger.Args(env="CartPole", demos="d.npz", num_demos=0, run_dir=str(tmp_path)))


def test_bad_expert_on_the_command_line(tmp_path):
    res = run_cli("cleanil/dagger.py", "--expert", "tests.controllers:nothing", "--run-dir", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        res.stderr.strip() == "error: --expert 'tests.controllers:nothing': module 'tests.controllers' has no 'nothing'"
    )


def test_dagger_learns_cartpole(tmp_path):
    """~20 s: 4 rounds of 500 env steps, 200 updates each."""
    run = run_script(tmp_path, "cleanil/dagger.py", "--env", "CartPole", "--total-steps", "2000", "--rounds", "4",
                     "--updates-per-round", "200", "--eval-episodes", "2", "--num-demos", "0")  # fmt: skip
    beats_random(run, "CartPole-v1")
    losses = [r["losses/dagger"] for r in read_metrics(run) if "losses/dagger" in r]
    assert losses[-1] < losses[0], losses
