"""Run algorithms x envs x seeds and write one JSON record per run into benchmark_results/records/.

Each job runs the algorithm's real CLI in its own process with one thread (OMP_NUM_THREADS=1),
``--jobs`` at a time. A finished record is skipped on the next call (``--force`` reruns it), and a
run that was interrupted (Ctrl-C, SIGTERM, a session's end) continues from its last checkpoint
(``--resume``), so an interrupted benchmark resumes where it stopped. Ctrl-C or SIGTERM to this
script is passed on to the runs under way (each writes a checkpoint) and starts no new one.
Records hold the command, seed, git revision, library versions, machine, env steps, wall-clock,
final and best normalized return and the curve.

Benchmark seeds start at ``--first-seed`` (1 by default); development uses seed 0, so reported
numbers never come from the seed the defaults were tuned on.

``--suite classic|mujoco|all`` runs the predefined grid (every algorithm on the envs it applies to).
``--algos sac`` runs the RL reference: SAC on the env's true reward (scripts/train_expert.py).
AIRL's reward transfer, a fresh SAC on the reward each AIRL seed learned (true reward hidden):
    python scripts/benchmark.py --algos airl --envs HalfCheetah --tag transfer \
        --extra="--reward-from runs/benchmark/airl/{env}__seed{seed}/run/reward.pt --total-steps 300000"

Run: python scripts/benchmark.py --algos bc --envs CartPole Pendulum --seeds 3 --jobs 2
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from cleanil import envs, runs

ALGOS = ("bc", "dagger", "gail", "airl", "iqlearn", "sqil", "density", "mce_irl", "drlhp", "bco", "gaifo", "sac")
# gaifo: gail.py --observation-only, imitating the expert's states alone (its demos' actions are dropped)
# sac: the RL reference on the env's true reward (scripts/train_expert.py, settings from
# configs/train_expert/), e.g. what DRLHP's learned reward is compared with at the same env steps;
# its best policy is written inside the run, never over the shipped experts
SCRIPTS = {a: f"cleanil/{a}.py" for a in ALGOS[:-2]} | {"gaifo": "cleanil/gail.py", "sac": "scripts/train_expert.py"}
ALGO_FLAGS = {"gaifo": ["--observation-only"]}  # the flags that make a script the algorithm of that name
CLASSIC = ("CartPole", "Acrobot", "MountainCar", "Pendulum")
MUJOCO = ("HalfCheetah", "Hopper", "Walker2d", "Ant")
# the envs each algorithm is benchmarked on, per suite (settings come from configs/<algo>/<EnvId>.yaml)
SUITES = {
    "classic": {"bc": CLASSIC, "dagger": CLASSIC, "gail": ("CartPole", "Pendulum"), "airl": ("CartPole", "Pendulum"),
                "iqlearn": ("CartPole", "Acrobot"), "sqil": ("CartPole", "Pendulum"),
                "density": ("CartPole", "Pendulum"), "drlhp": ("CartPole", "Pendulum"),
                "mce_irl": ("FrozenLake-v1", "CliffWalking-v1", "Taxi-v4"), "bco": ("CartPole", "Pendulum"),
                "gaifo": ("CartPole", "Pendulum")},
    "mujoco": {a: MUJOCO for a in ("airl", "sqil", "bco", "gaifo")}
              | {a: (*MUJOCO, "Swimmer") for a in ("bc", "dagger", "gail", "iqlearn")}
              | {"drlhp": ("HalfCheetah", "Hopper"), "density": ("HalfCheetah", "Hopper")},
}  # fmt: skip
SUITE_SEEDS = {"classic": 5, "mujoco": 3}
RUNNING: set[subprocess.Popen] = set()  # the training processes under way
STOP = threading.Event()  # set by SIGINT/SIGTERM: no new run starts
ENV_FLAGS: dict[str, str] = {}  # env id -> the module:EnvName-v0 name it was given as, for envs a module registers


def forward_stop(signum: int, frame: object) -> None:
    """Pass the signal on to every run (each writes a checkpoint and exits); start no new one."""
    STOP.set()
    for proc in list(RUNNING):
        proc.send_signal(signum)


@dataclass
class Args:
    algos: tuple[str, ...] = ("bc",)
    """algorithms to run (file names under cleanil/), or sac: SAC on the env's true reward, as a reference"""
    envs: tuple[str, ...] = ("CartPole", "Pendulum")
    """environments (aliases, gymnasium ids, or module:EnvName-v0 for an env that the module registers)"""
    seeds: int = 3
    """number of seeds per (algo, env): first_seed, first_seed + 1, ..."""
    first_seed: int = 1
    """first benchmark seed (seed 0 is the development seed)"""
    jobs: int = 2
    """runs at a time, one thread each"""
    extra: str = ""
    """extra flags passed to every run, as one string after '=': --extra='--num-demos 25 --total-steps 5000';
    {seed} and {env} in it become each run's seed and env id (e.g. a reward learned by the same seed)"""
    companion: str = ""
    """a command started beside each run and stopped when the run ends, as one string after '=' (e.g. a
    scripted labeller for drlhp's web page); {run} in it becomes the run's directory, {seed} and {env} as in
    --extra: --companion='python scripts/scripted_labeller.py --run {run}'"""
    out_dir: str = "benchmark_results/records"
    """where records are written"""
    run_root: str = "runs/benchmark"
    """where the runs' own outputs (runs/<...>) and logs go"""
    tag: str = ""
    """name of a variant run with --extra (e.g. exact); its records go to <out-dir>/<algo>__<tag>/"""
    force: bool = False
    """rerun and overwrite records that already exist"""
    suite: Literal["classic", "mujoco", "all"] | None = None
    """run a predefined grid instead of --algos x --envs: every algorithm that exists on the envs it
    applies to (classic control and tabular with 5 seeds, MuJoCo with 3; --seeds, if given, wins)"""
    dry_run: bool = False
    """print the runs that would be made and exit"""


def record_path(out_dir: str, algo: str, env_id: str, seed: int, tag: str = "") -> Path:
    return Path(out_dir) / (f"{algo}__{tag}" if tag else algo) / f"{env_id}__seed{seed}.json"


def run_job(algo: str, env_id: str, seed: int, args: Args) -> str:
    """Run one training process and turn its metrics.jsonl into a benchmark record."""
    variant = f"{algo}__{args.tag}" if args.tag else algo
    run_root = (envs.REPO_ROOT / args.run_root / variant / f"{env_id}__seed{seed}").resolve()
    run_dir_flag = os.path.relpath(run_root, envs.REPO_ROOT)
    extra = shlex.split(args.extra.replace("{seed}", str(seed)).replace("{env}", env_id))
    env_flag = ENV_FLAGS.get(env_id, env_id)  # module:EnvName-v0 as given, so that each run imports the module
    cmd = [sys.executable, SCRIPTS[algo], *ALGO_FLAGS.get(algo, []), "--env", env_flag, "--seed", str(seed),
           "--run-dir", run_dir_flag, "--run-name", "run", *extra]  # fmt: skip
    if algo == "sac":
        expert_dir = os.path.join(run_dir_flag, "run", "expert")
        cmd += ["--algo", "sac", "--out-dir", expert_dir, "--final-eval-episodes", "10"]
    run_dir = run_root / "run"
    resumed = (run_dir / "checkpoint.pt").exists() and not args.force  # an interrupted run: continue it
    # otherwise start afresh, replacing what a failed run (or one rerun with --force) left
    flags = ["--resume", os.path.relpath(run_dir, envs.REPO_ROOT)] if resumed else ["--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    log = run_root.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    if STOP.is_set():
        return f"not started {algo} {env_id} seed {seed}"
    with open(log, "a" if resumed else "w") as f:
        proc = subprocess.Popen(cmd + flags, cwd=envs.REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        RUNNING.add(proc)
        companion = None
        if args.companion:
            line = args.companion.replace("{run}", str(run_dir)).replace("{seed}", str(seed)).replace("{env}", env_id)
            companion = subprocess.Popen(
                shlex.split(line), cwd=envs.REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
            )
        proc.wait()
        RUNNING.discard(proc)
        if companion is not None:
            companion.terminate()
            companion.wait(timeout=30)
    if STOP.is_set():
        return f"stopped {algo} {env_id} seed {seed} (exit {proc.returncode}; its checkpoint is in {run_dir})"
    if proc.returncode != 0:
        return f"FAILED {algo} {env_id} seed {seed} (exit {proc.returncode}, log {log})"
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve, extra, final_eval = [], {}, {}  # extra: the latest value of quantities a curve is also read against
    for r in rows:
        extra |= {k: r[k] for k in ("queries",) if k in r}
        if "eval/return" in r:
            final_eval = {k: v for k, v in r.items() if k not in ("global_step", "env_steps", "time")}
            curve.append({"step": r["global_step"], "env_steps": r.get("env_steps", 0), "return": r["eval/return"],
                          "normalized_return": r.get("eval/normalized_return"), **extra})  # fmt: skip
    norms = [c["normalized_return"] for c in curve if c["normalized_return"] is not None]
    # wall-clock: this process's, or for a resumed run the run's own clock (it continues across resumes)
    wall = rows[-1]["time"] if resumed else time.time() - start
    record = {
        "algo": algo, "tag": args.tag, "env": env_id, "seed": seed,
        "command": " ".join(["python", *cmd[1:]]),
        "git": config["git"], "versions": config["versions"], "machine": config["machine"],
        "num_demos": config.get("num_demos"),
        "steps": rows[-1]["global_step"], "env_steps": max((r.get("env_steps", 0) for r in rows), default=0),
        "wall_clock_s": round(wall, 1), "resumed": resumed,
        "final_return": curve[-1]["return"], "final_normalized_return": norms[-1] if norms else None,
        "best_normalized_return": max(norms) if norms else None,
        "final_eval": final_eval,  # every metric of the last evaluation (e.g. IQ-Learn's reward correlations)
        "curve": curve, "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    if args.companion:  # the process that ran beside it (e.g. the scripted labeller of a web-labelled run)
        record["companion"] = args.companion
    path = record_path(args.out_dir, algo, env_id, seed, args.tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    norm = record["final_normalized_return"]
    return f"done {algo} {env_id} seed {seed}: return {record['final_return']:.1f}, normalized {norm}, {wall:.0f}s"


def make_grid(args: Args, seeds_given: bool) -> list[tuple[str, str, int]]:
    """(algo, env id, seed) runs: --algos x --envs, or a suite's algorithms on their envs."""
    ENV_FLAGS.update({envs.resolve_env_id(e): e for e in args.envs if ":" in e})
    exists = {a for a in ALGOS if (envs.REPO_ROOT / SCRIPTS[a]).exists()}
    if args.suite is None:
        unknown = [a for a in args.algos if a not in exists]
        if unknown:
            raise envs.CleanILError(f"unknown or missing algorithm(s) {', '.join(unknown)}; choose from {ALGOS}")
        pairs = [(a, e) for a in args.algos for e in args.envs]
        seeds = args.seeds
    else:
        suites = ("classic", "mujoco") if args.suite == "all" else (args.suite,)
        pairs = [(a, e, name) for name in suites for a, envs in SUITES[name].items() if a in exists for e in envs]
        seeds = {name: args.seeds if seeds_given else SUITE_SEEDS[name] for name in suites}
        return [(a, envs.resolve_env_id(e), s) for a, e, name in pairs
                for s in range(args.first_seed, args.first_seed + seeds[name])]  # fmt: skip
    return [(a, envs.resolve_env_id(e), s) for a, e in pairs for s in range(args.first_seed, args.first_seed + seeds)]


def main(args: Args) -> None:
    grid = make_grid(args, runs.flag_value(sys.argv[1:], "seeds") is not None)
    todo = [g for g in grid if args.force or not record_path(args.out_dir, *g, args.tag).exists()]
    print(f"{len(grid)} runs, {len(grid) - len(todo)} already recorded, {len(todo)} to go, {args.jobs} at a time")
    if args.dry_run:
        for algo, env_id, seed in todo:
            print(f"would run {algo} {env_id} seed {seed}")
        return
    failed = 0
    signal.signal(signal.SIGINT, forward_stop)
    signal.signal(signal.SIGTERM, forward_stop)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_job, *g, args) for g in todo]
        for i, future in enumerate(as_completed(futures), 1):
            line = future.result()
            failed += line.startswith("FAILED")
            print(f"[{i}/{len(todo)}] {line}", flush=True)
    if STOP.is_set():
        raise envs.CleanILError("stopped by a signal; the same command continues the unfinished runs")
    if failed:
        raise envs.CleanILError(f"{failed} of {len(todo)} run(s) failed; their logs are named above")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except envs.CleanILError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
