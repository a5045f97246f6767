"""Smoke runs of scripts/train_expert.py, scripts/collect_demos.py and scripts/benchmark.py through their CLIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, only_run_dir, read_metrics, run_cli

from cleanil import envs

EXPERT_TINY = ("--eval-episodes", "2", "--final-eval-episodes", "3", "--hidden", "16", "16", "--log-every", "50")


@pytest.mark.parametrize(
    "env, flags",
    [
        (
            "CartPole",
            ("--algo", "ppo", "--total-steps", "256", "--num-envs", "2", "--num-steps", "64", "--eval-every", "128"),
        ),
        ("CartPole", ("--algo", "dqn", "--total-steps", "300", "--learning-starts", "100", "--eval-every", "150")),
    ],
)
def test_train_expert_discrete_smoke(tmp_path, env, flags):
    out = tmp_path / "experts"
    res = run_cli("scripts/train_expert.py", "--env", env, "--run-dir", str(tmp_path / "runs"), "--out-dir", str(out),
                  *EXPERT_TINY, *flags)  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "CartPole-v1.json").read_text())
    assert meta["eval_episodes"] == 3 and meta["env_id"] == "CartPole-v1" and meta["algo"] == flags[1]
    rows = read_metrics(only_run_dir(tmp_path / "runs"))
    assert any(k.startswith("losses/") for r in rows for k in r)  # the update code ran
    envs.load_policy(out / "CartPole-v1.pt", envs.env_spec("CartPole-v1"))


def test_train_expert_ppo_continuous_smoke(tmp_path):
    """PPO on a continuous env: a tanh-Gaussian actor, saved and reloadable like SAC's."""
    out = tmp_path / "experts"
    res = run_cli("scripts/train_expert.py", "--env", "Pendulum", "--algo", "ppo", "--total-steps", "512",
                  "--num-envs", "2", "--num-steps", "64", "--eval-every", "256", "--gamma", "0.9",
                  "--run-dir", str(tmp_path / "runs"), "--out-dir", str(out), *EXPERT_TINY)  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "Pendulum-v1.json").read_text())
    assert meta["algo"] == "ppo" and meta["eval_episodes"] == 3
    rows = read_metrics(only_run_dir(tmp_path / "runs"))
    assert [r["global_step"] for r in rows if "losses/policy" in r] == [128, 256, 384, 512]
    assert all(np.isfinite(r["losses/policy"]) for r in rows if "losses/policy" in r)
    envs.load_policy(out / "Pendulum-v1.pt", envs.env_spec("Pendulum-v1"))


def test_train_expert_sac_resume_continues_and_keeps_better_expert(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "experts"
    common = ("--run-dir", str(runs), "--out-dir", str(out), *EXPERT_TINY)
    sac = ("--env", "Pendulum", "--learning-starts", "100", "--eval-every", "100", "--checkpoint-every", "150")
    res = run_cli("scripts/train_expert.py", *sac, *common, "--total-steps", "300")
    assert res.returncode == 0, res.stderr
    run = only_run_dir(runs)
    first = read_metrics(run)
    assert [r["global_step"] for r in first if "eval/return" in r] == [100, 200, 300]
    assert any("losses/critic" in r for r in first)

    # continue the same run to 450 steps from its checkpoint at step 300 (saved settings, one flag overridden)
    res = run_cli("scripts/train_expert.py", "--resume", str(run), "--total-steps", "450")
    assert res.returncode == 0, res.stderr
    assert "resuming at step 300" in res.stdout
    rows = read_metrics(run)
    evals = [r["global_step"] for r in rows if "eval/return" in r]
    assert evals == [100, 200, 300, 400, 450]
    steps = [r["global_step"] for r in rows if "losses/critic" in r]
    assert steps == sorted(set(steps)) and max(steps) > 300
    assert json.loads((run / "config.json").read_text())["total_steps"] == 300  # the original config stays

    # an existing expert that scores higher is kept
    meta = json.loads((out / "Pendulum-v1.json").read_text())
    meta["return_mean"] = 1e9
    (out / "Pendulum-v1.json").write_text(json.dumps(meta))
    res = run_cli("scripts/train_expert.py", *sac, *common, "--total-steps", "100", "--learning-starts", "50")
    assert res.returncode == 0 and "kept the existing expert" in res.stdout
    assert json.loads((out / "Pendulum-v1.json").read_text())["return_mean"] == 1e9


def test_train_expert_bad_input(tmp_path):
    res = run_cli("scripts/train_expert.py", "--resume", str(tmp_path / "nowhere"))
    assert (
        res.returncode == 2
        and res.stderr.strip() == f"error: --resume {tmp_path / 'nowhere'}: no config.json in that directory"
    )
    res = run_cli("scripts/train_expert.py", "--env", "Pendulum", "--algo", "dqn", "--run-dir", str(tmp_path))
    assert res.returncode == 2 and "DQN needs discrete actions" in res.stderr and "Traceback" not in res.stderr


def test_collect_demos_writes_a_valid_deterministic_file(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for path in (a, b):
        res = run_cli("scripts/collect_demos.py", "--env", "Pendulum", "--num-demos", "2", "--out", str(path))
        assert res.returncode == 0, res.stderr
    spec = envs.env_spec("Pendulum-v1")
    da, db = envs.load_demo_file(a, spec), envs.load_demo_file(b, spec)
    assert len(da["obs"]) == 400 and da["truncated"].sum() == 2
    for k in envs.DEMO_KEYS:
        np.testing.assert_array_equal(da[k], db[k])
    res = run_cli("scripts/collect_demos.py", "--env", "Pendulum", "--num-demos", "0", "--out", str(a))
    assert res.returncode == 2 and "--num-demos must be at least 1" in res.stderr


def test_benchmark_writes_records_and_resumes(tmp_path):
    out = tmp_path / "records"
    flags = ("--algos", "bc", "--envs", "CartPole", "--seeds", "2", "--jobs", "2", "--out-dir", str(out),
             "--run-root", str(tmp_path / "runs"),
             "--extra=--total-steps 40 --eval-every 20 --log-every 20 --eval-episodes 2 --num-demos 2")  # fmt: skip
    res = run_cli("scripts/benchmark.py", *flags)
    assert res.returncode == 0, res.stderr
    assert "2 to go" in res.stdout
    for seed in (1, 2):
        rec = json.loads((out / "bc" / f"CartPole-v1__seed{seed}.json").read_text())
        assert rec["seed"] == seed and rec["algo"] == "bc" and f"--seed {seed}" in rec["command"]
        assert [c["step"] for c in rec["curve"]] == [20, 40] and rec["final_normalized_return"] is not None
        assert rec["git"] and rec["versions"]["torch"] and rec["machine"]["cpu_count"] >= 1
        assert rec["final_eval"]["eval/return"] == rec["final_return"]  # the last evaluation's metrics
    res = run_cli("scripts/benchmark.py", *flags)
    assert res.returncode == 0 and "2 already recorded, 0 to go" in res.stdout
    res = run_cli("scripts/benchmark.py", "--algos", "nosuchalgo", "--out-dir", str(out))
    assert res.returncode == 2 and "unknown or missing algorithm" in res.stderr


def test_benchmark_sac_reference_leaves_the_shipped_experts_alone(tmp_path):
    shipped = (REPO / "cleanil" / "experts" / "Pendulum-v1.json").read_bytes()
    res = run_cli("scripts/benchmark.py", "--algos", "sac", "--envs", "Pendulum", "--seeds", "1", "--out-dir",
                  str(tmp_path / "records"), "--run-root", str(tmp_path / "runs"),
                  "--extra=--total-steps 300 --learning-starts 100 --eval-every 150 --eval-episodes 2")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rec = json.loads((tmp_path / "records" / "sac" / "Pendulum-v1__seed1.json").read_text())
    assert "scripts/train_expert.py" in rec["command"] and [c["env_steps"] for c in rec["curve"]] == [150, 300]
    assert (tmp_path / "runs" / "sac" / "Pendulum-v1__seed1" / "run" / "expert" / "Pendulum-v1.json").exists()
    assert (REPO / "cleanil" / "experts" / "Pendulum-v1.json").read_bytes() == shipped


def test_benchmark_gaifo_is_gail_from_states_alone(tmp_path):
    """The gaifo variant runs gail.py --observation-only: its record's command says so and its run is GAIfO's."""
    res = run_cli("scripts/benchmark.py", "--algos", "gaifo", "--envs", "Pendulum", "--seeds", "1", "--out-dir",
                  str(tmp_path / "records"), "--run-root", str(tmp_path / "runs"),
                  "--extra=--num-demos 2 --hidden 16 16 --total-steps 200 --learning-starts 100 --eval-every 200 "
                  "--eval-episodes 1 --batch-size 32")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    rec = json.loads((tmp_path / "records" / "gaifo" / "Pendulum-v1__seed1.json").read_text())
    assert rec["command"].startswith("python cleanil/gail.py --observation-only ") and rec["algo"] == "gaifo"
    config = json.loads((tmp_path / "runs" / "gaifo" / "Pendulum-v1__seed1" / "run" / "config.json").read_text())
    assert config["observation_only"] and config["algorithm"] == "gaifo_sac"


def test_benchmark_reward_transfer_uses_each_seeds_own_reward(tmp_path):
    """{seed} and {env} in --extra are filled per run: the transfer run of seed 2 trains on seed 2's reward."""
    tiny = "--total-steps 300 --learning-starts 150 --eval-every 300 --log-every 50 --batch-size 32 --eval-episodes 2"
    common = ("--algos", "airl", "--envs", "Pendulum", "--seeds", "1", "--first-seed", "2", "--out-dir",
              str(tmp_path / "records"), "--run-root", str(tmp_path / "runs"))  # fmt: skip
    res = run_cli("scripts/benchmark.py", *common, f"--extra=--num-demos 2 --hidden 16 16 {tiny}")
    assert res.returncode == 0, res.stdout + res.stderr
    reward = tmp_path / "runs" / "airl" / "Pendulum-v1__seed2" / "run" / "reward.pt"
    assert reward.exists()
    template = str(tmp_path / "runs" / "airl" / "{env}__seed{seed}" / "run" / "reward.pt")
    res = run_cli("scripts/benchmark.py", *common, "--tag", "transfer", f"--extra=--reward-from {template} {tiny}")
    assert res.returncode == 0, res.stdout + res.stderr
    rec = json.loads((tmp_path / "records" / "airl__transfer" / "Pendulum-v1__seed2.json").read_text())
    assert f"--reward-from {reward} " in rec["command"] and rec["final_normalized_return"] is not None
    rows = read_metrics(tmp_path / "runs" / "airl__transfer" / "Pendulum-v1__seed2" / "run")
    assert any("losses/critic" in r for r in rows) and not any("losses/discriminator" in r for r in rows)


def test_benchmark_continues_an_interrupted_run_from_its_checkpoint(tmp_path):
    """A run that stopped at step 20 (its checkpoint) is resumed to 40, not restarted."""
    tiny = ("--eval-every", "20", "--log-every", "20", "--eval-episodes", "2", "--num-demos", "2")
    root = tmp_path / "runs" / "bc" / "CartPole-v1__seed1"
    first = run_cli("cleanil/bc.py", "--env", "CartPole-v1", "--seed", "1", "--total-steps", "20", *tiny,
                    "--run-dir", str(root), "--run-name", "run")  # fmt: skip
    assert first.returncode == 0, first.stderr
    res = run_cli("scripts/benchmark.py", "--algos", "bc", "--envs", "CartPole", "--seeds", "1", "--out-dir",
                  str(tmp_path / "records"), "--run-root", str(tmp_path / "runs"),
                  "--extra=--total-steps 40 " + " ".join(tiny))  # fmt: skip
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "records" / "bc" / "CartPole-v1__seed1.json").read_text())
    assert rec["resumed"] and [c["step"] for c in rec["curve"]] == [20, 40]
    assert "resuming at step 20" in (root.with_suffix(".log")).read_text()


def test_sigterm_to_the_benchmark_checkpoints_its_runs(tmp_path):
    """SIGTERM to benchmark.py reaches the run under way (it writes a checkpoint); the next call continues it."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = ["--algos", "bc", "--envs", "Pendulum", "--seeds", "2", "--jobs", "1", "--out-dir", str(tmp_path / "rec"),
             "--run-root", str(tmp_path / "runs"), "--extra=--total-steps 1000000 --eval-every 1000000 --log-every 100 "
             "--num-demos 2 --hidden 32 32 --checkpoint-every 1000000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "scripts/benchmark.py", *flags], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        metrics = tmp_path / "runs" / "bc" / "Pendulum-v1__seed1" / "run" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to benchmark.py alone: it must pass it on to its run
        out, err = proc.communicate(timeout=60)
    finally:  # never leave benchmark.py or its million-step run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 2, err
    assert "stopped bc Pendulum-v1 seed 1 (exit 143" in out and "not started bc Pendulum-v1 seed 2" in out
    assert "the same command continues the unfinished runs" in err
    assert (metrics.parent / "checkpoint.pt").exists() and not (tmp_path / "rec").exists()


@pytest.mark.parametrize(
    "algo", ["bc", "dagger", "gail", "airl", "iqlearn", "sqil", "density", "mce_irl", "drlhp", "bco"]
)
def test_help_explains_every_flag(algo):
    import importlib

    fields = importlib.import_module(f"cleanil.{algo}").Args.__dataclass_fields__
    res = run_cli(f"cleanil/{algo}.py", "--help")
    assert res.returncode == 0
    for field in fields:
        assert "--" + field.replace("_", "-") in res.stdout
    assert res.stdout.count("(default") >= len(fields)


def test_benchmark_suite_grid(tmp_path):
    """--suite lists every existing algorithm on the envs it applies to, with the suite's seed count."""
    res = run_cli("scripts/benchmark.py", "--suite", "all", "--dry-run", "--out-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    runs = {tuple(line.split()[2:6:1]) for line in res.stdout.splitlines() if line.startswith("would run")}
    assert ("gail", "CartPole-v1", "seed", "5") in runs and ("gail", "CartPole-v1", "seed", "6") not in runs
    assert ("bc", "Hopper-v5", "seed", "3") in runs and ("bc", "Hopper-v5", "seed", "4") not in runs
    assert ("mce_irl", "Taxi-v4", "seed", "1") in runs and not any(r[1] == "Taxi-v4" and r[0] == "bc" for r in runs)
    algorithms = {p.stem for p in (REPO / "cleanil").glob("*.py")} - {"__init__", "nets", "envs", "runs", "labelling"}
    assert {r[0] for r in runs} == algorithms | {"gaifo"}  # every algorithm file (and gail's GAIfO), nothing else
    res = run_cli("scripts/benchmark.py", "--suite", "classic", "--seeds", "1", "--dry-run", "--out-dir", str(tmp_path))
    assert res.returncode == 0 and "seed 2" not in res.stdout


def test_speed_report(tmp_path):
    """scripts/speed.py times the eager and compiled loops against the plain loop of train_expert.py (SAC on
    Pendulum, PPO on CartPole, where IQ-Learn learns offline) and writes a section per env."""
    out = tmp_path / "speed.md"
    res = run_cli("scripts/speed.py", "--algos", "iqlearn", "--envs", "Pendulum", "CartPole", "--learning-starts",
                  "300", "--warmup", "40", "--measure", "600", "--discrete-scale", "1", "--repeats", "1",
                  "--threads", "1", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = out.read_text()
    pendulum, cartpole = report.split("## Pendulum-v1")[1].split("## CartPole-v1")
    for text, plain in ((pendulum, "Plain eager SAC loop"), (cartpole, "Plain eager PPO loop")):
        assert plain in text and "Simulator alone" in text
        assert float(text.split(plain)[1].split("**")[1].split()[0]) > 0  # its measured env steps/s
    rows = [line.split("|")[1:-1] for line in pendulum.splitlines() if line.startswith("| iqlearn")]
    assert [r[1].strip() for r in rows] == ["eager", "compiled"]
    for r in rows:
        env_rate, updates, flops = float(r[2]), float(r[3]), float(r[7])
        assert env_rate > 0 and updates == env_rate and flops > 0  # one update per env step; counted FLOPs
    rows = [line.split("|")[1:-1] for line in cartpole.splitlines() if line.startswith("| iqlearn")]
    assert [r[1].strip() for r in rows] == ["eager", "compiled"]
    for r in rows:
        assert r[2].strip() == "— (offline)" and float(r[3]) > 0 and len(r) == 7  # updates/s; no FLOP columns


def test_speed_rejects_an_algorithm_it_cannot_time(tmp_path):
    """An algorithm speed.py does not time (an on-policy one, or a typo) is a usage error, not a traceback."""
    out = tmp_path / "speed.md"
    for algo in ("bc", "gial"):
        res = run_cli("scripts/speed.py", "--algos", algo, "--out", str(out))
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert f"invalid choice '{algo}'" in res.stderr
    assert not out.exists()


def test_gallery_renders_the_expert_and_a_benchmark_policy(tmp_path):
    """A benchmark-shaped run of BC (seed 2; seed 3 too, which is not the lowest) beside the shipped expert."""
    root, out = tmp_path / "benchmark", tmp_path / "gallery"
    for seed in ("2", "3"):
        res = run_cli("cleanil/bc.py", "--env", "Pendulum", "--num-demos", "2", "--total-steps", "20", "--eval-every",
                      "20", "--eval-episodes", "2", "--seed", seed, "--run-name", "run",
                      "--run-dir", str(root / "bc" / f"Pendulum-v1__seed{seed}"))  # fmt: skip
        assert res.returncode == 0, res.stderr
    res = run_cli("scripts/gallery.py", "--envs", "Pendulum", "Reacher-v5", "--algos", "bc", "dagger", "--frames", "12",
                  "--every", "2", "--size", "48", "--run-root", str(root), "--out-dir", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Reacher-v5: no expert, skipped" in res.stdout
    clips = json.loads((out / "clips.json").read_text())["Pendulum-v1"]
    assert set(clips) == {"expert", "bc"} and clips["bc"]["seed"] == 2
    from PIL import Image

    for who in ("expert", "bc"):
        with Image.open(out / f"Pendulum-v1__{who}.webp") as image:
            assert image.size == (48, 48) and 1 < image.n_frames <= 12
    expert_return = clips["expert"]["return"]  # the whole episode, on the gallery's own reset seed
    assert clips["expert"]["normalized_return"] == pytest.approx(envs.normalized_score(expert_return, "Pendulum-v1"))
    page = (out / "README.md").read_text()
    assert "![expert on Pendulum-v1](Pendulum-v1__expert.webp)" in page and "![bc on Pendulum-v1]" in page
    assert page.splitlines()[-1].endswith("| - |")  # no DAgger policy here
    (out / "README.md").unlink()
    res = run_cli("scripts/gallery.py", "--page-only", "--envs", "Pendulum", "--algos", "bc", "dagger",
                  "--out-dir", str(out))  # fmt: skip
    assert res.returncode == 0 and (out / "README.md").read_text() == page
