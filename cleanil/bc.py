"""Behavioral cloning: supervised learning of the expert's actions.

Pomerleau (1991), "Efficient Training of Artificial Neural Networks for Autonomous Navigation",
https://doi.org/10.1162/neco.1991.3.1.88; Bain & Sammut (1995), "A Framework for Behavioural
Cloning", Machine Intelligence 15.

Objective, over expert pairs (s, a) ~ D:

    min_theta  E_D[ -log pi_theta(a | s) ]  -  w_ent * E_D[ H(pi_theta(. | s)) ]  +  w_l2 * ||theta||^2

- Discrete actions: a categorical policy (cross-entropy on logits).
- Continuous actions: maximum likelihood under a tanh-squashed Gaussian; the expert action is
  mapped back through atanh (clipped just inside the bounds). The entropy bonus uses the
  Gaussian's entropy before squashing (closed form).
- A random share of the transitions (``--val-fraction``) is held out; its loss is logged.
- The deterministic policy (argmax, or tanh of the mean) is evaluated periodically on reset seeds
  disjoint from the demonstrations' and saved to runs/<run>/model.pt.

Run: python cleanil/bc.py --env CartPole  (the defaults below, no config file for CartPole: 10 demos, 10k
gradient steps; normalized ~1.0 in about a minute on 2 CPU cores; MuJoCo settings in configs/bc/)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/bc/<EnvId>.yaml overrides them for that env (its file is printed at start),
    # and flags on the command line override both.
    # ---- run plumbing, common to every cleanil algorithm
    env: str = "CartPole"
    """environment: an alias (CartPole, Acrobot, MountainCar, Pendulum, HalfCheetah, Hopper, Walker2d, Ant, Swimmer,
    Humanoid), a registered gymnasium id, or module:EnvName-v0 for an env that the module registers on import"""
    env_kwargs: str = "{}"
    """keyword arguments of the env (gymnasium.make) as a JSON object, e.g. '{"ctrl_cost_weight": 0.2}'"""
    capture_video: bool = False
    """record one deterministic evaluation episode of the final policy to runs/<run>/videos/final.mp4"""
    seed: int = 0
    """random seed for torch, numpy and the evaluation episodes"""
    device: str = "auto"
    """torch device: auto (cuda if available, else cpu), cpu or cuda"""
    total_steps: int = 10_000
    """number of gradient steps"""
    num_demos: int | None = None
    """expert episodes to imitate (the first ones of --demos); default: every episode of --demos, else 10"""
    demos: str | None = None
    """path to a .npz demo file; by default demos are rolled out from the shipped expert and cached"""
    eval_every: int = 2_000
    """evaluate the policy every this many gradient steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    track: bool = False
    """log to Weights & Biases (offline unless a login or WANDB_MODE says otherwise)"""
    wandb_project: str = "cleanil"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity (team or user); None uses your default"""
    compile: bool | None = None
    """compile the update steps with torch.compile (eager if that fails); None: if >= 20k updates, where it pays"""
    cudagraphs: bool = False
    """with a compiled update on a GPU, replay it as a CUDA graph (torch.compile mode reduce-overhead)"""
    save_model: bool = True
    """save the trained policy to runs/<run>/model.pt"""
    run_dir: str = "runs"
    """folder under which each run gets its own directory"""
    run_name: str | None = None
    """name of the run's directory under run_dir (default: <env>__<algo>__<seed>__<unix time>)"""
    overwrite: bool = False
    """replace an existing run directory of that name (without it, the run refuses to start)"""
    resume: str | None = None
    """run directory (runs/<name>) to continue from its checkpoint, with its saved settings as defaults"""
    checkpoint_every: int = 5_000
    """write runs/<run>/checkpoint.pt every this many steps; also at the end and on Ctrl-C/SIGTERM"""
    # ---- the algorithm: behavioral cloning
    batch_size: int = 256
    """minibatch size of expert transitions"""
    lr: float = 1e-3
    """Adam learning rate"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the policy MLP"""
    ent_weight: float = 1e-3
    """weight w_ent of the entropy bonus"""
    l2_weight: float = 0.0
    """weight w_l2 of the L2 penalty on all policy parameters"""
    val_fraction: float = 0.1
    """share of the transitions held out to measure the validation loss"""
    log_every: int = 500
    """log training and validation losses every this many gradient steps"""


# -------------------------------------------------------------------------- losses (the algorithm)
def bc_loss_discrete(logits: torch.Tensor, actions: torch.Tensor, ent_weight: float) -> dict[str, torch.Tensor]:
    """-log softmax(logits)[a] averaged, minus w_ent * H(softmax(logits))."""
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    return {"loss": nll - ent_weight * entropy, "nll": nll, "entropy": entropy}


def bc_loss_continuous(actor: nets.TanhGaussianActor, obs: torch.Tensor, actions: torch.Tensor,
                       ent_weight: float) -> dict[str, torch.Tensor]:  # fmt: skip
    """-log pi(a|s) under the squashed Gaussian, minus w_ent * H(N(mu, sigma)).

    u = atanh((a - bias) / scale), log pi(a|s) = log N(u; mu, sigma) - sum log(scale (1 - tanh(u)^2)),
    H(N(mu, sigma)) = sum_i (log sigma_i + 0.5 log(2 pi e)).
    """
    mean, log_std = actor(obs)
    eps = 1e-5
    u = torch.atanh(((actions - actor.bias) / actor.scale).clamp(-1 + eps, 1 - eps))
    nll = -actor.log_prob_of_pre_tanh(u, mean, log_std).mean()
    entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean()
    return {"loss": nll - ent_weight * entropy, "nll": nll, "entropy": entropy}


def l2_penalty(module: nn.Module) -> torch.Tensor:
    """||theta||^2 over every trainable parameter."""
    return sum((p**2).sum() for p in module.parameters())


# -------------------------------------------------------- training (the loop and its run plumbing)
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    runs.check_budget(args)
    runs.set_seed(args.seed)
    demos = envs.load_demos(env_id, args.num_demos, args.demos)
    args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json

    # dataset: a random held-out share for validation (at least one transition on each side)
    obs = torch.as_tensor(demos["obs"], device=device)
    act = torch.as_tensor(demos["actions"], device=device)
    perm = torch.randperm(len(obs), device=device)
    n_val = min(max(1, int(args.val_fraction * len(obs))), len(obs) - 1)
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    actor = envs.make_actor(spec, args.hidden).to(device)
    actor.norm.mean.copy_(obs[train_idx].mean(0))
    actor.norm.std.copy_(obs[train_idx].std(0).clamp_min(1e-3) if len(train_idx) > 1 else torch.ones_like(obs[0]))
    optimizer = nets.Adam(actor.parameters(), args.lr)

    def losses(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if spec.discrete:
            out = bc_loss_discrete(actor(obs[idx]), act[idx], args.ent_weight)
        else:
            out = bc_loss_continuous(actor, obs[idx], act[idx], args.ent_weight)
        out["l2"] = l2_penalty(actor)
        out["loss"] = out["loss"] + args.l2_weight * out["l2"]
        return out

    def update(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = losses(idx)
        optimizer.descend(out["loss"])
        return {k: v.detach() for k, v in out.items()}

    update = nets.maybe_compile(update, args.compile, args.total_steps, args.cudagraphs)
    run = runs.Run(args, "bc", env_id, args.total_steps)
    run.restore({"actor": actor, "optimizer": optimizer})  # from the checkpoint, with --resume
    policy = envs.numpy_policy(actor, device)
    print(f"{env_id}: {args.num_demos} demos, {len(train_idx)} training / {n_val} validation transitions")

    metrics: dict = {}
    bar = runs.progress(args.total_steps, "bc", run.start)
    for step in range(run.start + 1, args.total_steps + 1):
        batch = train_idx[torch.randint(len(train_idx), (args.batch_size,), device=device)]
        train = update(batch)
        if step % args.log_every == 0 or step == args.total_steps:
            with torch.no_grad():
                val = losses(val_idx)
            metrics = {f"train/{k}": v for k, v in train.items()} | {"val/nll": val["nll"], "val/loss": val["loss"]}
            run.log(step, metrics)
        if step % args.eval_every == 0 or step == args.total_steps:
            actor.eval()
            metrics = envs.evaluate(policy, env_id, args.eval_episodes, args.seed)
            actor.train()
            run.log(step, metrics)
        bar.update(1)
        run.tick(step)
    bar.close()

    if args.save_model:
        envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="bc")
    run.record_video(policy)
    run.close()
    return metrics


if __name__ == "__main__":
    runs.run_cli(main, Args, "bc")
