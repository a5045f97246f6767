"""Measure how fast the training loops run, against the simulator and the machine's matmul peak.

For each env (HalfCheetah and CartPole by default) and each algorithm's loop on it, in one invocation:
- env steps/s and updates/s of the loop in steady state, with the update compiled (``--compile True``,
  the default for long runs) and eager (``--compile False``), the two interleaved ``--repeats`` times so
  that both see the same machine; plus the plain eager loop of scripts/train_expert.py (SAC on
  HalfCheetah, PPO on CartPole; torch.optim, backward()) as the common reference. Off-policy loops make
  one update per env step; PPO loops update once per rollout (updates/s not counted); an offline loop
  (IQ-Learn on CartPole) steps no env;
- the raw simulator step rate (random actions, one env);
- on continuous-control envs, the matmul throughput of this machine at the update's shapes
  (batch x 256 x 256, fp32) and the FLOPs of one update (counted by torch's FlopCounterMode), hence the
  share of peak the loop achieves.
The steady-state rate is taken between two logged steps after the warm-up (learning starts and the
one-off compile), so neither the random-action phase nor compilation is counted.

Writes a markdown report (``--out``, benchmark_results/speed.md by default) with the machine described.

Run: python scripts/speed.py --algos gail airl iqlearn drlhp --envs HalfCheetah CartPole
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cleanil import envs, runs

REPO = Path(__file__).resolve().parent.parent
PLAIN = "plain"  # scripts/train_expert.py's eager loop


@dataclass
class Args:
    algos: tuple[Literal["gail", "airl", "iqlearn", "drlhp"], ...] = ("gail", "airl", "iqlearn", "drlhp")
    """off-policy algorithms to time (file names under cleanil/)"""
    envs: tuple[str, ...] = ("HalfCheetah", "CartPole")
    """environments (aliases or gymnasium ids), one section of the report each"""
    device: str = "cpu"
    """torch device of the loops: cpu or cuda"""
    learning_starts: int = 1_000
    """env steps of random actions before the updates start"""
    warmup: int = 1_500
    """env steps timed from learning start before the measurement (covers the one-off compile)"""
    measure: int = 2_000
    """env steps measured per run"""
    discrete_scale: int = 10
    """warm-up and measurement are this many times longer on discrete envs, whose PPO loops run tens of times
    more env steps/s"""
    repeats: int = 2
    """eager/compiled pairs per algorithm, interleaved"""
    cudagraphs: bool = False
    """also time the compiled loop replayed as CUDA graphs (--cudagraphs; GPU only)"""
    threads: int | None = None
    """torch threads of each run (OMP_NUM_THREADS); None: torch's default for this machine"""
    out: str = "benchmark_results/speed.md"
    """markdown report to write ('' prints only)"""


def loop_rate(script: str, env: str, flags: list[str], args: Args, root: str) -> tuple[float, float | None]:
    """Steady-state (env steps/s, updates/s) of one run, between the first logged step after the warm-up and
    the last one. updates/s is None for a PPO loop (its rows carry no SAC temperature): it updates per rollout."""
    scale = args.discrete_scale if envs.env_spec(env).discrete else 1
    learning_starts, warmup, measure = args.learning_starts, scale * args.warmup, scale * args.measure
    total = learning_starts + warmup + measure
    run_dir = tempfile.mkdtemp(dir=root)  # its own folder: run names only differ by the second they start
    cmd = [sys.executable, script, "--env", env, "--total-steps", str(total), "--learning-starts",
           str(learning_starts), "--log-every", str(max(measure // 8, 1)), "--eval-every", str(total),
           "--device", args.device, "--run-dir", run_dir, *flags]  # fmt: skip
    cmd += ["--eval-episodes", "1"] + (["--out-dir", run_dir, "--final-eval-episodes", "1",
                                        "--checkpoint-every", "0"] if "train_expert" in script else [])  # fmt: skip
    envvars = {**os.environ, "WANDB_MODE": "disabled"}
    if args.threads:
        envvars["OMP_NUM_THREADS"] = str(args.threads)
    res = subprocess.run(cmd, cwd=REPO, env=envvars, capture_output=True, text=True)
    if res.returncode != 0 or "torch.compile failed" in res.stderr:
        lines = [x for x in res.stderr.strip().splitlines() if "error" in x.lower() or "failed" in x] or ["?"]
        print(f"{shlex.join(cmd)} failed: {lines[-1]}", file=sys.stderr)
        return float("nan"), float("nan")
    (run,) = [p for p in Path(run_dir).iterdir() if (p / "metrics.jsonl").exists()]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "eval/return" not in r]  # rows logged by the training loop
    after = [r for r in rows if r["global_step"] >= learning_starts + warmup]
    if len(after) < 2:
        print(f"{shlex.join(cmd)} logged under two steps after the warm-up: raise --measure", file=sys.stderr)
        return float("nan"), float("nan")
    start = after[0]
    seconds = rows[-1]["time"] - start["time"]
    updates = (rows[-1]["global_step"] - start["global_step"]) / seconds if "alpha" in start else None
    return (rows[-1]["env_steps"] - start["env_steps"]) / seconds, updates


def simulator_rate(env_id: str, steps: int = 20_000) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    t = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t)


def matmul_peak(device: torch.device, batch: int = 256, width: int = 256) -> float:
    """FLOP/s of fp32 (batch x width) @ (width x width), the update's dominant shape."""
    a, b = torch.randn(batch, width, device=device), torch.randn(width, width, device=device)
    reps = 2_000 if device.type == "cpu" else 20_000
    for _ in range(50):
        a @ b
    best = 0.0
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * batch * width * width * reps / (time.perf_counter() - t))
    return best


def flops_per_update(algo: str, env: str) -> float:
    """FLOPs of one update, from two short eager runs that differ only in their number of updates."""
    module = importlib.import_module(f"cleanil.{algo}")
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for updates in (5, 15):
            args = module.Args(env=env, total_steps=300 + updates, learning_starts=300, eval_every=10**9,
                               eval_episodes=1, compile=False, save_model=False,
                               run_dir=tempfile.mkdtemp(dir=tmp))  # fmt: skip
            with FlopCounterMode(display=False) as counter:
                module.main(args)
            counts.append(counter.get_total_flops())
    return (counts[1] - counts[0]) / 10


def median(values: list) -> float | None:
    return None if None in values else float(np.median(values))


def section(env: str, args: Args, peak: float) -> list[str]:
    """Time every loop on one env; its part of the report."""
    env_id = envs.resolve_env_id(env)
    sim = simulator_rate(env_id)
    modes = {"eager": ["--compile", "False"], "compiled": ["--compile", "True"]}
    if args.cudagraphs:
        modes["compiled + CUDA graphs"] = ["--compile", "True", "--cudagraphs"]
    rates: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            runs = [(PLAIN, "eager", "scripts/train_expert.py", [])]
            runs += [(algo, mode, f"cleanil/{algo}.py", flags) for algo in args.algos for mode, flags in modes.items()]
            for name, mode, script, flags in runs:
                rates.setdefault((name, mode), []).append(rate := loop_rate(script, env_id, flags, args, tmp))
                updates = "" if rate[1] is None else f", {rate[1]:.1f} updates/s"
                print(f"{env_id} {r + 1}/{args.repeats}: {name} {mode} {rate[0]:.1f} env steps/s{updates}", flush=True)
    continuous = not envs.env_spec(env_id).discrete  # FLOPs against the 256-wide matmul peak: MuJoCo nets
    flops = {algo: flops_per_update(algo, env_id) for algo in args.algos} if continuous else {}
    med = {key: (median([e for e, _ in runs]), median([u for _, u in runs])) for key, runs in rates.items()}
    plain, kind = med[(PLAIN, "eager")][0], "PPO" if med[(PLAIN, "eager")][1] is None else "SAC"
    lines = [
        f"## {env_id}",
        "",
        f"- Simulator alone (random actions, one env): **{sim:,.0f} env steps/s**.",
        f"- Plain eager {kind} loop (scripts/train_expert.py): **{plain:.1f} env steps/s** (median of {args.repeats}).",
        "",
        f"| algorithm | mode | env steps/s | updates/s | vs eager | vs plain {kind} | loop / simulator |"
        + (" MFLOP per update | achieved / peak |" if continuous else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if continuous else ""),
    ]
    for algo in args.algos:
        base = med[(algo, "eager")][0] or med[(algo, "eager")][1]  # an offline loop steps no env: its updates/s
        for mode in modes:
            env_rate, updates = med[(algo, mode)]
            rate = env_rate or updates
            cells = [algo, mode, f"{env_rate:.1f}" if env_rate else "— (offline)",
                     f"{updates:.1f}" if updates is not None else "— (per rollout)", f"{rate / base:.2f}x",
                     f"{env_rate / plain:.2f}x" if env_rate else "—",
                     f"{env_rate / sim:.4f}" if env_rate else "—"]  # fmt: skip
            if continuous:
                cells += [f"{flops[algo] / 1e6:.0f}", f"{updates * flops[algo] / peak:.0%}" if updates else "—"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def main(args: Args) -> None:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak(device)
    lines = [
        f"# Training speed, device {args.device}",
        "",
        f"Generated by `python scripts/speed.py {shlex.join(sys.argv[1:])}` at git {runs.git_revision()}.",
        f"Machine: {runs.machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
        + ".",
        f"Matmul peak at the off-policy update's shape (256 x 256 x 256, fp32): **{peak / 1e9:,.1f} GFLOP/s**.",
        "",
        "Off-policy loops make one update per env step (batch 256, 256x256 networks on MuJoCo), so updates/s = "
        "env steps/s; PPO loops update once per rollout; an offline loop steps no env and is compared by "
        "updates/s. Rates are medians over the repeats, measured after the warm-up; the ratios come from this one run.",
        "",
    ]
    for env in args.envs:
        lines += section(env, args, peak)
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


if __name__ == "__main__":
    runs.run_cli(main, Args, "speed")
