"""Roll out an expert policy into a demonstration file (.npz, the format of README's 'Bring your own demos').

Episode k is reset with a seed derived from ``--seed`` and k, and the expert acts
deterministically, so the same command writes the same file.

Run: python scripts/collect_demos.py --env HalfCheetah --num-demos 25 --out demos/halfcheetah.npz
(``--no-actions`` leaves the actions out: a file for the algorithms that learn from observations alone)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cleanil import envs, runs


@dataclass
class Args:
    env: str = "CartPole"
    """environment: an alias (CartPole, Pendulum, HalfCheetah, ...), a gymnasium id, or module:EnvName-v0 for an
    env that the module registers on import"""
    env_kwargs: str = "{}"
    """keyword arguments of the env (gymnasium.make) as a JSON object, e.g. '{"ctrl_cost_weight": 0.2}'"""
    num_demos: int = 10
    """number of episodes to record"""
    seed: int = 0
    """demo seed: episode k is reset with a fixed seed derived from it"""
    policy: str | None = None
    """a policy file saved by cleanil (runs/<run>/model.pt); default: the shipped expert"""
    out: str = "demos.npz"
    """output .npz file (written atomically; an existing file is replaced)"""
    no_actions: bool = False
    """leave the actions out of the file: demonstrations of observations alone, for gail.py --observation-only,
    bco.py and density.py --density-on s or ss"""


def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    if args.num_demos < 1:
        raise envs.CleanILError(f"--num-demos must be at least 1, got {args.num_demos}")
    actor = envs.load_expert(env_id) if args.policy is None else envs.load_policy(args.policy, spec)
    policy = envs.numpy_policy(actor, torch.device("cpu"))
    result = envs.rollout(policy, env_id, args.num_demos, envs.DEMO_SEED_BASE + 10_000 * args.seed, record=True)
    data = envs.validate_demos(result["transitions"], spec, args.out)
    if args.no_actions:
        del data["actions"]
    envs.save_demo_file(args.out, data)
    returns = result["returns"]
    what = "episodes of observations alone" if args.no_actions else "episodes"
    print(f"wrote {args.num_demos} {what} ({len(data['obs'])} transitions) to {Path(args.out)}: "
          f"return {returns.mean():.1f} +- {returns.std():.1f}")  # fmt: skip
    return {"return_mean": float(returns.mean()), "transitions": len(data["obs"])}


if __name__ == "__main__":
    runs.run_cli(main, Args, "collect_demos")
