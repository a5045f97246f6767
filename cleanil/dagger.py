"""DAgger: dataset aggregation with an expert that can be queried in any state.

Ross, Gordon & Bagnell (2011), "A Reduction of Imitation Learning and Structured Prediction to
No-Regret Online Learning", AISTATS, https://arxiv.org/abs/1011.0686.

Round i = 0, 1, ..., N-1:
    1. roll out the mixture pi_i = beta_i pi* + (1 - beta_i) pi_hat_i: at every step the expert's
       action is executed with probability beta_i, the learner's otherwise;
    2. label every visited state s with the expert's action pi*(s) (not the executed one);
    3. aggregate: D <- D u {(s, pi*(s))};
    4. retrain pi_hat on D, warm-started from the previous round:
           discrete:   min E_D[ -log pi_hat(a* | s) ]
           continuous: min E_D[ || (mu(s) - a*) / scale ||^2 ],  mu(s) = the learner's deterministic action
    5. evaluate pi_hat.
BC is the special case beta_i = 1 for every round. Because the learner is trained on the states its
own mistakes lead to, its error grows linearly rather than quadratically in the horizon.

- beta schedules: linear (beta_0 (1 - i / N_decay), floored at 0), exponential (beta_0 p^i), constant.
- The expert is the shipped one, a policy a cleanil script saved (``--expert runs/<run>/model.pt``),
  or any Python callable ``--expert module:function`` that maps one observation (a 1-D numpy array)
  to one action; ``module`` is imported from the current directory or the Python path. Example, a
  hand-written CartPole controller in ``my_controller.py``:
      def act(obs):
          return int(obs[2] + 0.5 * obs[3] > 0)   # push toward the side the pole falls to
  then ``python cleanil/dagger.py --env CartPole --expert my_controller:act``.
- ``--save-dataset PATH`` writes the aggregated dataset after each round as a demo file (README
  format; ``actions`` are the expert's labels, ``rewards``/``next_obs`` those of the executed action);
  ``--demos PATH --num-demos N`` starts from such a file.

Run: python cleanil/dagger.py --env CartPole  (the defaults below, no config file for CartPole: normalized 1.0
with 10k env steps, under a minute on 1 CPU; MuJoCo settings in configs/dagger/)
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/dagger/<EnvId>.yaml overrides them for that env (its file is printed at start),
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
    """random seed for torch, numpy, the environment and the evaluation episodes"""
    device: str = "auto"
    """torch device: auto (cuda if available, else cpu), cpu or cuda"""
    total_steps: int = 10_000
    """environment steps of interaction, split evenly over the rounds"""
    num_demos: int | None = None
    """expert episodes in the dataset before the first round (0: start from the first round's rollouts);
    default: every episode of --demos, else 0"""
    demos: str | None = None
    """path to a .npz demo file for the initial dataset; by default demos come from the shipped expert"""
    eval_every: int = 1
    """evaluate the learner every this many rounds (and after the last)"""
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
    checkpoint_every: int = 1
    """write runs/<run>/checkpoint.pt every this many rounds; also at the end and on Ctrl-C/SIGTERM"""
    # ---- the algorithm: DAgger
    expert: str | None = None
    """the expert: None (the shipped one), a policy file saved by cleanil, or module:function"""
    rounds: int = 10
    """number of DAgger rounds (rollout, label, aggregate, retrain)"""
    beta_schedule: Literal["linear", "exponential", "constant"] = "linear"
    """how the probability that the expert acts decays over rounds"""
    beta0: float = 1.0
    """beta of the first round (1: the first round is pure expert data, as in the paper)"""
    beta_decay_rounds: int = 5
    """linear schedule: beta reaches 0 at this round"""
    beta_ratio: float = 0.5
    """exponential schedule: beta_i = beta0 * ratio^i"""
    updates_per_round: int = 1_000
    """gradient steps on the aggregated dataset after each round (warm-started)"""
    batch_size: int = 256
    """minibatch size"""
    lr: float = 1e-3
    """Adam learning rate"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the policy MLP"""
    save_dataset: str | None = None
    """write the aggregated dataset to this .npz demo file after every round"""


# ------------------------------------------------------------ schedules and losses (the algorithm)
def beta_schedule(kind: str, i: int, beta0: float, decay_rounds: int, ratio: float) -> float:
    """Probability that the expert acts in round i (0-based)."""
    if kind == "linear":
        return beta0 * max(0.0, 1.0 - i / decay_rounds)
    if kind == "exponential":
        return beta0 * ratio**i
    return beta0


def dagger_loss_discrete(logits: torch.Tensor, expert_actions: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[a*], averaged."""
    return torch.nn.functional.cross_entropy(logits, expert_actions)


def dagger_loss_continuous(actions: torch.Tensor, expert_actions: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """|| (mu(s) - a*) / scale ||^2 summed over action dimensions, averaged over the batch."""
    return (((actions - expert_actions) / scale) ** 2).sum(-1).mean()


# -------------------------------------------------------------------------- experts (run plumbing)
def load_expert_fn(spec_str: str | None, spec: envs.EnvSpec) -> Callable[[np.ndarray], np.ndarray]:
    """The expert as a function of one observation, from the shipped expert, a saved policy file, or
    ``module:function``."""
    if spec_str is None or Path(spec_str).suffix == ".pt":
        actor = envs.load_expert(spec.env_id) if spec_str is None else envs.load_policy(spec_str, spec)
        batched = envs.numpy_policy(actor, torch.device("cpu"))
        return lambda obs: batched(obs[None])[0]
    module_name, sep, fn_name = spec_str.partition(":")
    if not sep or not module_name or not fn_name:
        raise envs.CleanILError(f"--expert {spec_str!r}: expected a .pt policy file or module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except ImportError as e:
        raise envs.CleanILError(f"--expert {spec_str!r}: cannot import module {module_name!r} ({e})") from None
    except AttributeError:
        raise envs.CleanILError(f"--expert {spec_str!r}: module {module_name!r} has no {fn_name!r}") from None
    if not callable(fn):
        raise envs.CleanILError(f"--expert {spec_str!r}: {fn_name!r} is not callable")
    return fn


def check_action(action: object, spec: envs.EnvSpec, source: str) -> np.ndarray:
    """The expert's action as an array that fits the env, or one clear error."""
    a = np.asarray(action)
    if spec.discrete and not (a.shape == () and np.issubdtype(a.dtype, np.integer) and 0 <= a < spec.act_dim):
        raise envs.CleanILError(
            f"expert {source} returned {action!r}; {spec.env_id} needs an int in [0, {spec.act_dim})"
        )
    if not spec.discrete and (a.shape != (spec.act_dim,) or not np.isfinite(a).all()):
        raise envs.CleanILError(
            f"expert {source} returned shape {a.shape}; {spec.env_id} needs ({spec.act_dim},) finite"
        )
    return a


# -------------------------------------------------------- training (the loop and its run plumbing)
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    if args.rounds < 1 or args.total_steps < args.rounds:
        raise envs.CleanILError(
            f"need --rounds >= 1 and --total-steps >= --rounds, got {args.rounds}, {args.total_steps}"
        )
    if args.demos is not None and args.num_demos is not None and args.num_demos < 1:
        raise envs.CleanILError("--demos needs --num-demos >= 1 (how many of its episodes start the dataset)")
    runs.check_budget(args)
    runs.set_seed(args.seed)
    expert = load_expert_fn(args.expert, spec)
    source = args.expert or "shipped"
    rng = np.random.default_rng(args.seed)

    # the aggregated dataset, in the demo format (actions = the expert's labels)
    data: dict[str, list] = {k: [] for k in envs.DEMO_KEYS}
    if args.demos is not None or args.num_demos:
        demos = envs.load_demos(env_id, args.num_demos, args.demos)
        args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json
        for k in envs.DEMO_KEYS:
            data[k] += list(demos[k])

    actor = envs.make_actor(spec, args.hidden).to(device)
    optimizer = nets.Adam(actor.parameters(), args.lr)
    scale = None if spec.discrete else actor.scale

    def update(obs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if spec.discrete:
            loss = dagger_loss_discrete(actor(obs), labels)
        else:
            loss = dagger_loss_continuous(actor.act(obs, deterministic=True), labels, scale)
        optimizer.descend(loss)
        return loss.detach()

    update = nets.maybe_compile(update, args.compile, args.rounds * args.updates_per_round, args.cudagraphs)
    learner = envs.numpy_policy(actor, device)
    run = runs.Run(args, "dagger", env_id, args.rounds)  # a step of the run is a round
    saved = run.restore({"actor": actor, "optimizer": optimizer},
                        lambda: {"data": {k: np.array(v) for k, v in data.items()}, "env_steps": env_steps,
                                 "rng": rng.bit_generator.state})  # fmt: skip
    if saved:  # resuming: the aggregated dataset and counters (the episode in flight is not kept)
        data = {k: list(v) for k, v in saved["data"].items()}
        rng.bit_generator.state = saved["rng"]
    env = envs.make_env(env_id)
    obs, _ = env.reset(seed=args.seed + run.start)
    steps_per_round = args.total_steps // args.rounds
    # the dataset as tensors for training, extended by each round's new rows (initial demos first)
    obs_t = torch.as_tensor(np.array(data["obs"]), dtype=torch.float32, device=device).reshape(-1, spec.obs_dim)
    labels = torch.as_tensor(np.array(data["actions"]), device=device)
    labels = labels.long() if spec.discrete else labels.float().reshape(-1, spec.act_dim)
    env_steps, metrics = saved["env_steps"] if saved else 0, {}
    bar = runs.progress(args.rounds * steps_per_round, "dagger", env_steps)
    for i in range(run.start, args.rounds):
        beta = beta_schedule(args.beta_schedule, i, args.beta0, args.beta_decay_rounds, args.beta_ratio)
        # 1-3: roll out the mixture, label every visited state with the expert's action, aggregate
        expert_share, first_new = 0, len(data["obs"])
        for t in range(steps_per_round):
            label = check_action(expert(obs), spec, source)
            use_expert = rng.random() < beta
            action = label if use_expert else learner(obs[None])[0]
            next_obs, reward, terminated, truncated, _ = env.step(action)
            last = t == steps_per_round - 1 and not (terminated or truncated)  # the round cuts the episode
            row = (obs, label, reward, next_obs, terminated, truncated or last)
            for k, v in zip(envs.DEMO_KEYS, row, strict=True):
                data[k].append(v)
            expert_share += use_expert
            obs = env.reset()[0] if terminated or truncated or last else next_obs
            env_steps += 1
            bar.update(1)
        # 4: retrain the learner on everything so far, warm-started
        new_obs = torch.as_tensor(np.array(data["obs"][first_new:]), dtype=torch.float32, device=device)
        new_labels = torch.as_tensor(np.array(data["actions"][first_new:]), device=device)
        obs_t = torch.cat([obs_t, new_obs])
        labels = torch.cat([labels, new_labels.long() if spec.discrete else new_labels.float()])
        if i == 0:  # fix the input standardization on the first round's data
            actor.norm.mean.copy_(obs_t.mean(0))
            actor.norm.std.copy_(obs_t.std(0).clamp_min(1e-3) if len(obs_t) > 1 else torch.ones_like(obs_t[0]))
        for _ in range(args.updates_per_round):
            idx = torch.randint(len(obs_t), (args.batch_size,), device=device)
            loss = update(obs_t[idx], labels[idx])
        metrics = {
            "round": i,
            "beta": beta,
            "expert_action_share": expert_share / steps_per_round,
            "dataset_size": len(obs_t),
            "losses/dagger": loss,
        }
        if args.save_dataset:
            envs.save_demo_file(args.save_dataset, {k: np.array(v) for k, v in data.items()})
        # 5: evaluate
        if (i + 1) % args.eval_every == 0 or i == args.rounds - 1:
            actor.eval()
            metrics |= envs.evaluate(learner, env_id, args.eval_episodes, args.seed)
            actor.train()
        run.log(i + 1, metrics, env_steps=env_steps)
        run.tick(i + 1)
    bar.close()
    env.close()

    if args.save_model:
        envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="dagger")
    run.record_video(learner)
    run.close()
    return metrics


if __name__ == "__main__":
    runs.run_cli(main, Args, "dagger")
