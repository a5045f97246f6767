"""Runs that survive interruption and divergence: checkpoints, --resume, SIGINT/SIGTERM, the NaN guard,
and run directories that are never clobbered. Interruptions are real signals sent to this process."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import signal
import time

import pytest
import torch
from conftest import REPO, read_metrics, run_cli

from cleanil import runs

H = (32, 32)
SAC = {"total_steps": 300, "learning_starts": 100, "eval_every": 150, "log_every": 50, "eval_episodes": 1,
       "num_demos": 2, "batch_size": 32, "hidden": H, "checkpoint_every": 100}  # fmt: skip
PPO = {"total_steps": 512, "num_envs": 4, "num_steps": 32, "update_epochs": 1, "eval_every": 256, "eval_episodes": 1,
       "num_demos": 2, "batch_size": 64, "hidden": H, "checkpoint_every": 128}  # fmt: skip
DRLHP = {"num_queries": 20, "reward_updates": 5, "fragment_length": 10, "query_every": 100, "reward_hidden": H}
# (module, args, the step to interrupt at, whether nothing is in flight so a resumed run equals a whole one)
CASES = {
    "bc": (
        "bc",
        {
            "env": "Pendulum",
            "total_steps": 60,
            "eval_every": 30,
            "log_every": 10,
            "eval_episodes": 1,
            "num_demos": 2,
            "hidden": H,
            "checkpoint_every": 25,
        },
        37,
        True,
    ),
    "dagger": (
        "dagger",
        {"env": "CartPole", "total_steps": 200, "rounds": 4, "updates_per_round": 10, "eval_episodes": 1, "hidden": H},
        2,
        False,
    ),
    "gail_sac": ("gail", {"env": "Pendulum", **SAC}, 170, False),
    "gail_ppo": ("gail", {"env": "CartPole", **PPO}, 256, False),
    "airl_sac": ("airl", {"env": "Pendulum", **SAC}, 170, False),
    "airl_ppo": ("airl", {"env": "CartPole", **PPO}, 256, False),
    "iqlearn_online": ("iqlearn", {"env": "Pendulum", "offline": False, "heldout_demos": 1, **SAC}, 170, False),
    "iqlearn_offline": (
        "iqlearn",
        {
            "env": "CartPole",
            "offline": True,
            "total_steps": 60,
            "eval_every": 30,
            "log_every": 10,
            "eval_episodes": 1,
            "num_demos": 1,
            "heldout_demos": 1,
            "batch_size": 32,
            "hidden": H,
            "checkpoint_every": 25,
        },
        37,
        True,
    ),
    "sqil_sac": ("sqil", {"env": "Pendulum", **SAC}, 170, False),
    "sqil_discrete": ("sqil", {"env": "CartPole", **SAC}, 170, False),
    "density_sac": (
        "density",
        {"env": "Pendulum", "ratio": True, "policy_samples": 50, "refit_every": 100, **SAC},
        170,
        False,
    ),
    "density_ppo": ("density", {"env": "CartPole", **PPO}, 256, False),
    "mce_irl": (
        "mce_irl",
        {
            "env": "FrozenLake-v1",
            "num_demos": 20,
            "total_steps": 30,
            "eval_every": 10,
            "checkpoint_every": 7,
            "tolerance": 0.0,
        },
        17,
        True,
    ),
    "gaifo_sac": ("gail", {"env": "Pendulum", "observation_only": True, **SAC}, 170, False),
    "bco": (
        "bco",
        {
            "env": "Pendulum",
            "total_steps": 300,
            "pre_steps": 100,
            "alpha": 0.5,
            "inverse_updates": 10,
            "policy_updates": 10,
            "eval_every": 100,
            "eval_episodes": 1,
            "num_demos": 2,
            "batch_size": 32,
            "hidden": H,
            "inverse_hidden": H,
            "checkpoint_every": 100,
        },
        170,
        False,
    ),
    "drlhp_sac": ("drlhp", {"env": "Pendulum", **DRLHP, **SAC}, 220, False),
    "drlhp_ppo": ("drlhp", {"env": "CartPole", **DRLHP, **PPO}, 256, False),
}


SAC_STATE = {"actor", "critics", "targets", "log_alpha", "actor_opt", "critic_opt", "alpha_opt", "replay"}
PPO_STATE = {"actor", "critic", "optimizer"}
# What each case's checkpoint must hold: its registered objects and its extra state. A key renamed or left
# out (the discriminator not registered, say) fails the resume test instead of skipping a comparison.
SAVED = {
    "bc": ({"actor", "optimizer"}, set()),
    "dagger": ({"actor", "optimizer"}, {"data", "env_steps", "rng"}),
    "gail_sac": (SAC_STATE | {"disc", "disc_opt"}, set()),
    "gail_ppo": (PPO_STATE | {"disc", "disc_opt"}, set()),
    "airl_sac": (SAC_STATE | {"reward", "disc_opt"}, set()),
    "airl_ppo": (PPO_STATE | {"reward", "disc_opt"}, set()),
    "iqlearn_online": ({"critics", "targets", "actor", "log_alpha", "critic_opt", "actor_opt", "replay"}, set()),
    "iqlearn_offline": ({"critics", "targets", "actor", "log_alpha", "critic_opt"}, set()),
    "sqil_sac": ({"critic", "target", "actor", "log_alpha", "critic_opt", "actor_opt", "alpha_opt", "replay"}, set()),
    "sqil_discrete": ({"critic", "target", "log_alpha", "critic_opt", "replay"}, set()),
    "density_sac": (SAC_STATE | {"recent", "recent_count"}, set()),
    "density_ppo": (PPO_STATE | {"recent", "recent_count"}, set()),
    "mce_irl": ({"reward_net", "optimizer", "schedule"}, set()),
    "gaifo_sac": (SAC_STATE | {"disc", "disc_opt"}, set()),
    "bco": ({"inverse", "actor", "inverse_opt", "actor_opt", "labels", "replay"}, set()),
    "drlhp_sac": (SAC_STATE | {"reward", "reward_opt"}, {"pool", "labels", "rng", "oracle", "rounds", "pending"}),
    "drlhp_ppo": (PPO_STATE | {"reward", "reward_opt"}, {"pool", "labels", "rng", "oracle", "rounds", "pending"}),
}


@pytest.fixture
def signal_guard():
    """SIGTERM and SIGINT raise in this test while no run holds them: a run whose handler regressed fails
    the test that sent the signal instead of ending the pytest session. Yields the guard handler."""

    class Unhandled(BaseException):
        pass

    def guard(signum, frame):
        raise Unhandled(f"{signal.Signals(signum).name} reached the test: no run was handling it")

    before = {s: signal.signal(s, guard) for s in (signal.SIGTERM, signal.SIGINT)}
    yield guard
    for s, h in before.items():
        signal.signal(s, h)


def make_args(case: str, tmp_path, name: str, **more) -> tuple:
    module, kwargs, k, exact = CASES[case]
    mod = importlib.import_module(f"cleanil.{module}")
    kwargs = {key: v for key, v in kwargs.items() if key in mod.Args.__dataclass_fields__}
    return mod, mod.Args(**kwargs, run_dir=str(tmp_path), run_name=name, **more), k, exact


def hook_tick(monkeypatch, action):
    """Call ``action(run, step)`` at the start of every Run.tick (the end of each step of a loop)."""
    original = runs.Run.tick

    def tick(self, step):
        action(self, step)
        original(self, step)

    monkeypatch.setattr(runs.Run, "tick", tick)


def load_checkpoint(run_dir) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)


def tensors_of(state) -> list[torch.Tensor]:
    """Every tensor in a (nested) checkpoint entry, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors_of(state[key])]
    if isinstance(state, list | tuple):
        return [t for s in state for t in tensors_of(s)]
    if hasattr(state, "items"):  # a TensorDict
        return [t for key in sorted(state.keys()) for t in tensors_of(state[key])]
    return []


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_run_resumes_where_it_stopped(case, tmp_path, monkeypatch, signal_guard):
    mod, args, k, exact = make_args(case, tmp_path, "run")
    run_dir = tmp_path / "run"

    def send_sigterm(run, step):
        if step == k:
            os.kill(os.getpid(), signal.SIGTERM)

    hook_tick(monkeypatch, send_sigterm)
    with pytest.raises(runs.RunStopped) as stopped:
        mod.main(args)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert f"SIGTERM at step {k}" in str(stopped.value) and f"--resume {run_dir}" in str(stopped.value)
    interrupted = load_checkpoint(run_dir)
    assert interrupted["step"] == k
    assert signal.getsignal(signal.SIGTERM) is signal_guard  # handlers are given back
    objects, extra = SAVED[case]
    assert set(interrupted["objects"]) == objects and set(interrupted["extra"] or {}) == extra
    monkeypatch.undo()

    mod.main(dataclasses.replace(args, resume=str(run_dir)))
    final = load_checkpoint(run_dir)
    assert final["step"] == (args.rounds if case == "dagger" else args.total_steps)
    rows = read_metrics(run_dir)
    common = {"global_step", "time", "env_steps", "env_steps_per_s"}
    for kind in {frozenset(r) - common for r in rows}:  # each kind of row (losses, evaluations): no step twice
        steps = [r["global_step"] for r in rows if frozenset(r) - common == kind]
        assert steps == sorted(set(steps)), (sorted(kind), steps)
    assert rows[-1]["global_step"] == final["step"] and "eval/return" in rows[-1]
    if "replay" in objects:  # the buffer came back whole and the resumed run appended to it
        before, after = interrupted["objects"]["replay"]["data"], final["objects"]["replay"]["data"]
        assert len(after) > len(before) >= k
        assert all(torch.equal(a[: len(before)], b) for a, b in zip(tensors_of(after), tensors_of(before), strict=True))
    if "data" in extra:  # DAgger's aggregated dataset
        n = len(interrupted["extra"]["data"]["obs"])
        assert (final["extra"]["data"]["obs"][:n] == interrupted["extra"]["data"]["obs"]).all()
    if "labels" in extra:  # DRLHP's preference labels
        n = len(interrupted["extra"]["labels"]["mu"])
        assert n > 0 and torch.equal(final["extra"]["labels"]["mu"][:n], interrupted["extra"]["labels"]["mu"])
    if exact:  # nothing in flight: the resumed run ends where an uninterrupted one does, bit for bit
        _, whole, _, _ = make_args(case, tmp_path, "whole")
        mod.main(whole)
        reference = load_checkpoint(tmp_path / "whole")
        got, want = tensors_of(final["objects"]), tensors_of(reference["objects"])
        assert len(got) == len(want) > 0 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_ctrl_c_writes_a_checkpoint_and_stops(tmp_path, monkeypatch, signal_guard):
    mod, args, k, _ = make_args("bc", tmp_path, "run")
    hook_tick(monkeypatch, lambda run, step: step == k and os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(runs.RunStopped) as stopped:
        mod.main(args)
    assert stopped.value.code == 130 and f"SIGINT at step {k}: checkpoint written" in str(stopped.value)
    assert load_checkpoint(tmp_path / "run")["step"] == k
    assert signal.getsignal(signal.SIGINT) is signal_guard  # the run gave its handler back


@pytest.mark.parametrize(
    "case", ["bc", "dagger", "gail_sac", "airl_ppo", "iqlearn_online", "sqil_discrete", "mce_irl", "drlhp_ppo", "bco"]
)
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(case, tmp_path, monkeypatch, signal_guard):
    mod, args, k, _ = make_args(case, tmp_path, "run")

    def poison(run, step):
        if step == k:  # a parameter of the first registered network diverges
            net = next(v for v in run.objects.values() if isinstance(v, torch.nn.Module))
            with torch.no_grad():
                next(net.parameters()).view(-1)[0] = float("nan")

    hook_tick(monkeypatch, poison)
    with pytest.raises(runs.RunStopped) as stopped:
        mod.main(args)
    message = str(stopped.value)
    assert stopped.value.code == 3 and "is not finite at step" in message and "last good checkpoint" in message
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["step"] < k  # the checkpoint due at k (or later) was refused
    assert all(torch.isfinite(t).all() for t in tensors_of(checkpoint["objects"]) if t.is_floating_point())
    assert not (tmp_path / "run" / "model.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal_guard


def test_a_non_finite_loss_is_named(tmp_path):
    from cleanil import bc

    run = runs.Run(bc.Args(run_dir=str(tmp_path), run_name="r"), "bc", "CartPole-v1", total=100)
    run.log(10, {"losses/critic": torch.tensor(1.0), "alpha": math.nan})  # only losses and parameters are guarded
    with pytest.raises(runs.RunStopped, match=r"^losses/critic is not finite at step 50: stopped; no checkpoint"):
        run.log(50, {"losses/critic": torch.tensor(math.inf)})
    assert [r["global_step"] for r in read_metrics(tmp_path / "r")] == [10]


def test_sigterm_through_the_cli_then_resume(tmp_path):
    """A real SIGTERM to a running script: a checkpoint, exit status 143, one line saying how to resume."""
    import subprocess
    import sys

    flags = ["--env", "Pendulum", "--num-demos", "2", "--hidden", "32", "32", "--eval-every", "100000", "--log-every",
             "100", "--checkpoint-every", "1000000", "--run-dir", str(tmp_path), "--run-name", "r"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "cleanil/bc.py", *flags, "--total-steps", "1000000"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        metrics = tmp_path / "r" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:  # never leave the million-step run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"checkpoint written; continue with python cleanil/bc.py --resume {tmp_path / 'r'}" in err
    step = load_checkpoint(tmp_path / "r")["step"]
    assert step >= 100
    res = run_cli("cleanil/bc.py", "--resume", str(tmp_path / "r"), "--total-steps", str(step + 50))
    assert res.returncode == 0, res.stderr
    assert f"resuming at step {step}" in res.stdout
    assert read_metrics(tmp_path / "r")[-1]["global_step"] == step + 50


def test_a_second_run_with_the_same_name_does_not_clobber_the_first(tmp_path):
    flags = ("--env", "CartPole", "--total-steps", "20", "--eval-every", "20", "--eval-episodes", "1", "--num-demos",
             "1", "--hidden", "16", "16", "--run-dir", str(tmp_path), "--run-name", "same")  # fmt: skip
    assert run_cli("cleanil/bc.py", *flags).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "same").iterdir()}
    again = run_cli("cleanil/bc.py", *flags, "--seed", "1")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'same'} already exists: pass --overwrite to replace it, "
        f"or --resume {tmp_path / 'same'} to continue it"
    ]
    assert {p.name: p.read_bytes() for p in (tmp_path / "same").iterdir()} == before
    replaced = run_cli("cleanil/bc.py", *flags, "--seed", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert '"seed": 1' in (tmp_path / "same" / "config.json").read_text()


def test_bad_resume_targets_get_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"env": "CartPole"}')
    no_checkpoint = run_cli("cleanil/bc.py", "--resume", str(tmp_path / "run"))
    assert no_checkpoint.returncode == 2
    lines = no_checkpoint.stderr.strip().splitlines()
    assert lines == [f"error: --resume {tmp_path / 'run'}: no checkpoint.pt in that directory"]
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    corrupt = run_cli("cleanil/bc.py", "--resume", str(tmp_path / "run"))
    assert corrupt.returncode == 2 and len(corrupt.stderr.strip().splitlines()) == 1
    assert "not a cleanil checkpoint" in corrupt.stderr
    missing = run_cli("cleanil/gail.py", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no config.json" in missing.stderr
    blocked = run_cli("cleanil/bc.py", "--run-dir", str(tmp_path / "run" / "config.json"), "--total-steps", "5")
    assert blocked.returncode == 2 and "cannot create run directory" in blocked.stderr
