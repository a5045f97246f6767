"""BCO: behavioral cloning from observation, with BCO(alpha) iterations.

Torabi, Warnell & Stone (2018), "Behavioral Cloning from Observation", IJCAI,
https://arxiv.org/abs/1805.01954.

The demonstrations hold states alone, (s_t, s_{t+1}); the agent learns which action explains a transition
from its own interaction I = {(s, a, s')}, labels the expert's transitions with it, and clones them:

    inverse dynamics:  max_theta  E_{(s, a, s') ~ I}[ log M_theta(a | s, s') ]
    labels:            a~_t = the most likely action of M_theta(. | s_t, s_{t+1}), per expert transition
    policy:            max_phi    E_{(s_t, a~_t) ~ D_E}[ log pi_phi(a~_t | s_t) ]  +  w_ent * H(pi_phi(. | s_t))

BCO(alpha): I starts with ``--pre-steps`` steps of random actions (the pre-demonstration interaction
I^pre); then each iteration runs the current policy (sampling its actions) for alpha I^pre more steps,
adds them to I, and refits M_theta, the labels and pi_phi, until ``--total-steps`` steps of interaction.
BCO(0) (``--alpha 0``) fits once, after I^pre. The fits continue from the previous iteration's weights.

What this implementation chooses:
- M_theta reads x = [s, s' - s] (standardized with the expert's transitions: the inputs it labels), and
  has the policy's form: a categorical over discrete actions; for continuous ones a tanh-squashed Gaussian
  whose label is the squashed mean. The policy is bc.py's (same likelihood, entropy bonus).
- Every step of I is kept, terminal transitions included (their s' is the state the env reached).
- Evaluation (deterministic policy, reset seeds apart from the demonstrations') never adds to I; the
  env-step axis of the curves counts interaction only.

Run: python cleanil/bco.py --env HalfCheetah  (the defaults: 10 action-free demos, 20k random steps, 100k steps of
interaction in all; normalized 0.962 +- 0.007 over 3 benchmark seeds, 6-8 min per run on one CPU core;
configs/bco/ holds the classic-control budget, 10k steps)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/bco/<EnvId>.yaml overrides them for that env (its file is printed at start),
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
    total_steps: int = 100_000
    """environment steps of interaction in all, I^pre included"""
    num_demos: int | None = None
    """expert episodes to imitate (the first ones of --demos); default: every episode of --demos, else 10"""
    demos: str | None = None
    """path to a .npz demo file, actions not needed; by default the shipped expert's demos, actions dropped"""
    eval_every: int = 10_000
    """evaluate the policy at the first fit after every this many env steps (and at the end)"""
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
    """save the policy to runs/<run>/model.pt and the inverse dynamics model to runs/<run>/inverse_model.pt"""
    run_dir: str = "runs"
    """folder under which each run gets its own directory"""
    run_name: str | None = None
    """name of the run's directory under run_dir (default: <env>__<algo>__<seed>__<unix time>)"""
    overwrite: bool = False
    """replace an existing run directory of that name (without it, the run refuses to start)"""
    resume: str | None = None
    """run directory (runs/<name>) to continue from its checkpoint, with its saved settings as defaults"""
    checkpoint_every: int = 10_000
    """write runs/<run>/checkpoint.pt every this many env steps; also at the end and on Ctrl-C/SIGTERM"""
    # ---- the algorithm: BCO(alpha)
    pre_steps: int = 20_000
    """I^pre: env steps of random actions before the first fit"""
    alpha: float = 0.2
    """BCO(alpha): each iteration adds alpha * pre_steps steps of the current policy, then refits (0: fit once)"""
    inverse_updates: int = 2_000
    """gradient steps on the inverse dynamics model per fit"""
    policy_updates: int = 2_000
    """gradient steps on the policy per fit"""
    batch_size: int = 256
    """minibatch size of both models"""
    lr: float = 1e-3
    """Adam learning rate of both models"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the policy"""
    inverse_hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the inverse dynamics model"""
    ent_weight: float = 1e-3
    """weight w_ent of the policy's entropy bonus (as in bc.py)"""
    explore_std: float = 0.0
    """continuous actions: Gaussian noise added to the policy's sampled actions while it collects, as a share
    of each action's half-range (then clipped to the bounds): more varied actions for the inverse model"""
    buffer_size: int = 1_000_000
    """capacity of the interaction store I (older steps are dropped beyond it)"""


# -------------------------------------------------------------------------- losses (the algorithm)
def nll_discrete(logits: torch.Tensor, actions: torch.Tensor, ent_weight: float) -> dict[str, torch.Tensor]:
    """-log softmax(logits)[a] averaged, minus w_ent * H(softmax(logits))."""
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    return {"loss": nll - ent_weight * entropy, "nll": nll, "entropy": entropy}


def nll_continuous(model: nets.TanhGaussianActor, x: torch.Tensor, actions: torch.Tensor,
                   ent_weight: float) -> dict[str, torch.Tensor]:  # fmt: skip
    """-log p(a|x) under the squashed Gaussian, minus w_ent * H(N(mu, sigma)).

    u = atanh((a - bias) / scale), log p(a|x) = log N(u; mu, sigma) - sum log(scale (1 - tanh(u)^2)),
    H(N(mu, sigma)) = sum_i (log sigma_i + 0.5 log(2 pi e)).
    """
    mean, log_std = model(x)
    eps = 1e-5
    u = torch.atanh(((actions - model.bias) / model.scale).clamp(-1 + eps, 1 - eps))
    nll = -model.log_prob_of_pre_tanh(u, mean, log_std).mean()
    entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean()
    return {"loss": nll - ent_weight * entropy, "nll": nll, "entropy": entropy}


def nll(model: nn.Module, x: torch.Tensor, actions: torch.Tensor, discrete: bool, ent_weight: float) -> dict:
    """The likelihood loss of either model: M_theta(a | s, s') on x = [s, s' - s], or pi_phi(a | s) on x = s."""
    return nll_discrete(model(x), actions, ent_weight) if discrete else nll_continuous(model, x, actions, ent_weight)


def transition_input(obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """x = [s, s' - s]: what the inverse dynamics model reads of a transition."""
    return torch.cat([obs, next_obs - obs], -1)


def standardize_from(norm: nets.Normalizer, x: torch.Tensor) -> None:
    """Set a fixed input standardization to the mean and std of ``x`` (std at least 1e-3)."""
    norm.mean.copy_(x.mean(0))
    norm.std.copy_(x.std(0).clamp_min(1e-3) if len(x) > 1 else torch.ones_like(x[0]))


def fit_iterations(args: Args) -> list[int]:
    """The env steps after which BCO(alpha) fits: I^pre, then every alpha I^pre steps, and the last step."""
    if args.alpha == 0:
        return [args.pre_steps]
    every = max(1, round(args.alpha * args.pre_steps))
    return sorted(set(range(args.pre_steps, args.total_steps, every)) | {args.total_steps})


# ------------------------------------------------------------ main (the loop and its run plumbing)
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    runs.check_budget(args, names=runs.BUDGET_FLAGS + ("pre_steps", "inverse_updates", "policy_updates"))
    if args.alpha < 0:
        raise envs.CleanILError(f"--alpha must be at least 0, got {args.alpha}")
    if args.alpha == 0 and args.total_steps != args.pre_steps:
        print(f"BCO(0) interacts for --pre-steps {args.pre_steps} steps only: --total-steps set to it")
        args = replace(args, total_steps=args.pre_steps)
    if args.pre_steps > args.total_steps:
        raise envs.CleanILError(f"--pre-steps {args.pre_steps} exceeds --total-steps {args.total_steps}")
    runs.set_seed(args.seed)
    demos = envs.load_demos(env_id, args.num_demos, args.demos, actions=False)  # states alone
    args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json
    expert_obs = torch.as_tensor(demos["obs"], device=device)
    expert_x = transition_input(expert_obs, torch.as_tensor(demos["next_obs"], device=device))

    inverse = nets.make_actor(2 * spec.obs_dim, spec.act_dim, spec.discrete, spec.action_low, spec.action_high,
                              args.inverse_hidden).to(device)  # fmt: skip
    actor = envs.make_actor(spec, args.hidden).to(device)
    standardize_from(inverse.norm, expert_x)
    standardize_from(actor.norm, expert_obs)
    inverse_opt, actor_opt = nets.Adam(inverse.parameters(), args.lr), nets.Adam(actor.parameters(), args.lr)
    n = len(expert_obs)  # labels a~ of the expert's transitions, inferred at every fit
    labels = (
        torch.zeros(n, dtype=torch.long, device=device)
        if spec.discrete
        else torch.zeros(n, spec.act_dim, device=device)
    )

    def update_inverse(b: dict) -> dict:
        """One step on -E_I[log M_theta(a | s, s')]."""
        out = nll(inverse, transition_input(b["obs"], b["next_obs"]), b["act"], spec.discrete, 0.0)
        inverse_opt.descend(out["loss"])
        return {f"inverse/{k}": v.detach() for k, v in out.items() if k != "loss"}

    def update_policy(idx: torch.Tensor) -> dict:
        """One step on -E_{D_E}[log pi_phi(a~ | s)] - w_ent H(pi_phi), a~ the inferred labels."""
        out = nll(actor, expert_obs[idx], labels[idx], spec.discrete, args.ent_weight)
        actor_opt.descend(out["loss"])
        return {f"policy/{k}": v.detach() for k, v in out.items()}

    fits = fit_iterations(args)
    updates = len(fits) * max(args.inverse_updates, args.policy_updates)
    update_inverse = nets.maybe_compile(update_inverse, args.compile, updates, args.cudagraphs)
    update_policy = nets.maybe_compile(update_policy, args.compile, updates, args.cudagraphs)

    run = runs.Run(args, "bco", env_id, args.total_steps)
    store = nets.make_replay_buffer(args.buffer_size, args.batch_size, device)  # I: the agent's own (s, a, s')
    run.restore({"inverse": inverse, "actor": actor, "inverse_opt": inverse_opt, "actor_opt": actor_opt,
                 "labels": labels, "replay": store})  # fmt: skip
    fitted = run.start >= args.pre_steps  # whether a policy exists yet (it acts after the first fit)
    print(f"{env_id}: {args.num_demos} demos of observations alone ({len(expert_obs)} transitions); "
          f"fits after env steps {fits[0]}, ..., {fits[-1]} ({len(fits)} in all)")  # fmt: skip
    env = envs.make_vec_env(env_id, 1)
    env.single_action_space.seed(args.seed + run.start)
    obs = env.reset(seed=args.seed + run.start)[0]  # a resumed run starts a new episode
    bar, metrics, final = runs.progress(args.total_steps, "bco", run.start), {}, {}
    explore, act_dtype = (
        envs.numpy_policy(actor, device, deterministic=False),
        np.int64 if spec.discrete else np.float32,
    )
    next_eval, fit_at = args.eval_every, set(fits)
    for step in range(run.start + 1, args.total_steps + 1):
        if not fitted:  # I^pre: random actions
            action = np.array([env.single_action_space.sample()])
        else:  # BCO(alpha): the current policy, its actions sampled (plus --explore-std noise)
            action = explore(obs)
            if args.explore_std > 0 and not spec.discrete:
                noise = args.explore_std * (spec.action_high - spec.action_low) / 2 * np.random.randn(*action.shape)
                action = np.clip(action + noise, spec.action_low, spec.action_high).astype(np.float32)
        next_obs, _, _, _, info = env.step(action)  # neither reward nor termination is used
        row = {"obs": obs, "act": action.astype(act_dtype), "next_obs": envs.true_next_obs(next_obs, info)}
        store.extend(nets.to_tensordict(row | {k: row[k].astype(np.float32) for k in ("obs", "next_obs")}, device))
        obs = next_obs
        bar.update(1)
        if step in fit_at:  # refit M_theta on all of I, relabel the demos, refit pi_phi
            for _ in range(args.inverse_updates):
                metrics = update_inverse(store.sample())
            with torch.no_grad():
                labels.copy_(inverse.act(expert_x, deterministic=True))
            for _ in range(args.policy_updates):
                metrics |= update_policy(torch.randint(len(expert_obs), (args.batch_size,), device=device))
            fitted = True
            run.log(step, metrics | {"interaction": len(store)}, env_steps=step)
            if step >= next_eval or step == args.total_steps:
                next_eval = (step // args.eval_every + 1) * args.eval_every
                final = envs.evaluate(envs.numpy_policy(actor, device), env_id, args.eval_episodes, args.seed)
                run.log(step, final, env_steps=step)
        run.tick(step)
    bar.close()
    if args.save_model:
        envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="bco")
        blob = {"state_dict": inverse.state_dict(), "hidden": list(args.inverse_hidden), "input": "[s, s' - s]"}
        envs.atomic_torch_save(blob, run.dir / "inverse_model.pt")
    run.record_video(envs.numpy_policy(actor, device))
    run.close()
    return final


if __name__ == "__main__":
    runs.run_cli(main, Args, "bco")
