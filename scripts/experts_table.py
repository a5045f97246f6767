"""Write benchmark_results/experts.md: one row per shipped expert, from its metadata in cleanil/experts/.

Each row: env, RL algorithm, mean +- std return over the metadata's deterministic evaluation
episodes, the random policy's return, the target return the project set for that env, training env
steps, wall-clock and machine. Nothing in the table is typed by hand: rerun this script after
training an expert.

Run: python scripts/experts_table.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from cleanil import envs

# Minimum mean return a shipped expert should reach (the project's targets).
TARGETS = {
    "CartPole-v1": 495, "Acrobot-v1": -85, "MountainCar-v0": -115, "Pendulum-v1": -200,
    "HalfCheetah-v5": 6000, "Hopper-v5": 3000, "Walker2d-v5": 4000, "Ant-v5": 3500, "Swimmer-v5": 300,
    "Humanoid-v5": 5000,
}  # fmt: skip


@dataclass
class Args:
    expert_dir: str = str(envs.EXPERT_DIR)
    """folder holding the shipped <EnvId>.json metadata files"""
    out: str = "benchmark_results/experts.md"
    """markdown file to write"""


def machine_text(machine: dict) -> str:
    return f"{machine['cpu_count']} CPU" + (f", {machine['gpu']}" if machine.get("gpu") else "")


def table(expert_dir: Path) -> str:
    lines = [
        "# Shipped experts",
        "",
        "Written by `python scripts/experts_table.py` from the metadata in `cleanil/experts/`. Returns are",
        "means over deterministic episodes on reset seeds used for nothing else (not demos, not evaluation",
        "during training); the random policy is scored on the same seeds.",
        "",
        "| env | algo | expert return | random return | target | met | env steps | wall-clock | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(expert_dir.glob("*.json")):
        m = json.loads(path.read_text())
        target = TARGETS.get(m["env_id"])
        met = "" if target is None else ("yes" if m["return_mean"] >= target else "no")
        lines.append(
            f"| {m['env_id']} | {m['algo']} | {m['return_mean']:.1f} +- {m['return_std']:.1f} "
            f"({m['eval_episodes']} episodes) | {m['random_return_mean']:.1f} | "
            f"{'' if target is None else f'>= {target}'} | {met} | {m['total_steps']:,} | "
            f"{m['wall_clock_s'] / 60:.1f} min | {machine_text(m['machine'])} |"
        )
    return "\n".join(lines) + "\n"


def main(args: Args) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table(Path(args.expert_dir)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
