"""Density-based reward: RL on the log-density of a kernel density estimate of the expert's data.

The method of the `imitation` library's DensityAlgorithm (Gleave et al. 2022, "imitation: Clean Imitation
Learning Implementations", https://arxiv.org/abs/2211.11972), after kernel density estimation (Rosenblatt
1956; Parzen 1962). No reward is learned by gradient descent: the expert's transitions, as features x
of states, state-action pairs or state-next-state pairs (--density-on s | sa | ss), are standardized
(z = (x - mu_E) / sigma_E) and a Gaussian kernel density is fitted to them,

    log p_E(x) = log sum_i exp(-||z - z_i||^2 / (2 h^2)) - log n - (d / 2) log(2 pi h^2),

with bandwidth h by Scott's rule for standardized data, h = n^(-1 / (d + 4)) (or --bandwidth). The
policy maximizes the discounted sum of

    r(x) = [log p_E(x) - floor_E]_+                                        (default)
    r(x) = [log p_E(x) - floor_E]_+ - [log p_pi(x) - floor_pi]_+           (--ratio)

where p_pi is the same estimate fitted to the agent's --policy-samples most recent transitions,
refitted every --refit-every env steps: log p_E - log p_pi rewards what the expert does more often than
the agent does now, as the library's importance-weighted variant. floor is the lowest leave-one-out
log-density of the model's own points; shifting by it and clipping at it keeps the rewards on the
scale of the data (a state far from every expert point gets 0, not -||z||^2 / (2 h^2)), and sets how
an episode's end is valued: terminal values are masked, so ending an episode is worth 0, what leaving
the expert's states for good is worth. That is a bonus for staying near the expert, right for experts
that never end their episodes (CartPole and the MuJoCo experts shipped here) and wrong for one that
ends them on purpose (MountainCar's reaches its goal).

The env's reward is hidden from the agent (evaluation alone reads it). The policy is trained by SAC
(continuous actions, default) or PPO (--generator ppo; the only choice for discrete actions), as in
gail.py. The density is computed in torch on the run's device, brute force over the expert's points in
chunks (no tree): at 10 MuJoCo demos (10k points, d = 23 for HalfCheetah's s-a pairs) one SAC batch of
256 costs ~60 MFLOP, a fraction of the SAC update's ~580.

Run: python cleanil/density.py --env CartPole  (settings from configs/density/CartPole-v1.yaml)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/density/<EnvId>.yaml overrides them for that env (its file is printed at start),
    # and flags on the command line override both.
    # ---- run plumbing, common to every cleanil algorithm
    env: str = "Pendulum"
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
    """environment steps of interaction"""
    num_demos: int | None = None
    """expert episodes to imitate (the first ones of --demos); default: every episode of --demos, else 10"""
    demos: str | None = None
    """path to a .npz demo file; by default demos are generated from the shipped expert (and cached)"""
    eval_every: int = 10_000
    """evaluate the policy every this many env steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    track: bool = False
    """log to Weights & Biases (offline unless a login or WANDB_MODE says otherwise)"""
    wandb_project: str = "cleanil"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity (team or user); None uses your default"""
    compile: bool | None = None
    """compile the SAC update with torch.compile (eager if that fails); None: if >= 20k updates, where it pays"""
    cudagraphs: bool = False
    """with a compiled update on a GPU, replay it as a CUDA graph (torch.compile mode reduce-overhead)"""
    save_model: bool = True
    """save the policy to runs/<run>/model.pt and the expert's density model to runs/<run>/density.pt"""
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
    log_every: int = 1_000
    """log losses every this many env steps (PPO logs after every rollout)"""
    # ---- the algorithm: density-based reward
    density_on: Literal["s", "sa", "ss"] = "sa"
    """what the density models: states (s), state-action pairs (sa) or state-next-state pairs (ss); on s or ss
    the demos need no actions"""
    bandwidth: float | None = None
    """kernel bandwidth h on standardized features; None: Scott's rule n^(-1 / (d + 4))"""
    ratio: bool = False
    """reward log p_E - log p_pi: also subtract the density of the agent's recent transitions"""
    policy_samples: int = 10_000
    """--ratio: the agent's most recent transitions that p_pi is fitted to"""
    refit_every: int = 10_000
    """--ratio: refit p_pi every this many env steps"""
    generator: Literal["sac", "ppo"] | None = None
    """policy optimizer: sac (off-policy, continuous actions) or ppo (on-policy); None: sac if it applies"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the actor and critics"""
    lr: float = 3e-4
    """learning rate of the actor and critics"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 256
    """minibatch size (SAC) or PPO minibatch size"""
    tau: float = 0.005
    """sac: Polyak rate of the target critics"""
    buffer_size: int = 1_000_000
    """sac: replay capacity"""
    learning_starts: int = 5_000
    """sac: env steps of random actions before updates start"""
    num_envs: int = 8
    """ppo: parallel envs"""
    num_steps: int = 128
    """ppo: steps per env per rollout"""
    update_epochs: int = 10
    """ppo: optimization epochs per rollout"""
    gae_lambda: float = 0.95
    """ppo: GAE lambda"""
    clip_coef: float = 0.2
    """ppo: policy ratio clip"""
    vf_coef: float = 0.5
    """ppo: value loss weight"""
    max_grad_norm: float = 0.5
    """ppo: gradient clipping"""
    anneal_lr: bool = True
    """ppo: decay the learning rate linearly to 0"""


# ------------------------------------------------------------------- the density model (the algorithm)
def features(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, on: str) -> torch.Tensor:
    """x: s, [s, a] or [s, s'] (actions as vectors: one-hot for discrete actions)."""
    return obs if on == "s" else torch.cat([obs, act if on == "sa" else next_obs], -1)


class KernelDensity(nn.Module):
    """Gaussian kernel density on standardized points, with its floor (lowest leave-one-out log-density)."""

    def __init__(self, points: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bandwidth: float | None):
        super().__init__()
        n, d = points.shape
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("z", (points - mean) / std)
        self.h = bandwidth if bandwidth is not None else n ** (-1 / (d + 4))  # Scott's rule, standardized data
        self.register_buffer("floor", self.log_density(points, leave_one_out=True).min())

    def log_density(self, x: torch.Tensor, leave_one_out: bool = False, chunk: int = 2048) -> torch.Tensor:
        """log p(x) = logsumexp_i(-||z - z_i||^2 / (2 h^2)) - log n - (d / 2) log(2 pi h^2), chunk rows at a time;
        ``leave_one_out``: x are the model's own points, each left out of its own sum."""
        n, d = self.z.shape
        out = []
        for start in range(0, len(x), chunk):
            q = (x[start : start + chunk] - self.mean) / self.std
            sq = (q * q).sum(-1, keepdim=True) - 2 * q @ self.z.T + (self.z * self.z).sum(-1)  # ||q - z_i||^2
            logk = -sq.clamp_min(0) / (2 * self.h**2)
            if leave_one_out:
                rows = torch.arange(len(q), device=x.device)
                logk[rows, start + rows] = -torch.inf
            out.append(torch.logsumexp(logk, -1))
        norm = math.log(n - leave_one_out) + d / 2 * math.log(2 * math.pi * self.h**2)
        return torch.cat(out) - norm

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        """[log p(x) - floor]_+."""
        return (self.log_density(x) - self.floor).clamp_min(0)


class DensityReward:
    """r(x) from the expert's model and, with --ratio, the agent's: a ring of its recent features that p_pi
    is refitted to every --refit-every env steps (the ring is saved in checkpoints)."""

    def __init__(self, expert_x: torch.Tensor, args: Args):
        self.args = args
        self.expert = KernelDensity(expert_x, expert_x.mean(0), expert_x.std(0).clamp_min(1e-3), args.bandwidth)
        self.ring = torch.zeros(args.policy_samples, expert_x.shape[1], device=expert_x.device)
        self.seen = torch.zeros((), dtype=torch.long, device=expert_x.device)
        self.agent: KernelDensity | None = None
        self.refits = -1  # step // refit_every at the last refit

    def observe(self, x: torch.Tensor, step: int) -> None:
        """Add the agent's newest features; refit p_pi when due (every --refit-every env steps)."""
        if not self.args.ratio:
            return
        idx = (self.seen + torch.arange(len(x), device=x.device)) % len(self.ring)
        self.ring[idx] = x
        self.seen += len(x)
        if (self.agent is None or step // self.args.refit_every > self.refits) and self.seen >= 2:
            recent = self.ring[: min(int(self.seen), len(self.ring))]
            self.agent = KernelDensity(recent, self.expert.mean, self.expert.std, self.args.bandwidth)
            self.refits = step // self.args.refit_every

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        r = self.expert.reward(x)
        return r if self.agent is None else r - self.agent.reward(x)


# ---------------------------------------------------------------------- generators (the algorithm)
def train_sac(args: Args, spec: envs.EnvSpec, device: torch.device, actor: nn.Module, reward_fn: DensityReward,
              run: runs.Run) -> dict:  # fmt: skip
    """Off-policy: one env step, one SAC update on rewards r(x) of the replayed transitions."""
    critics = nets.TwinQNetwork(spec.obs_dim, spec.act_dim, args.hidden).to(device)
    targets = copy.deepcopy(critics).requires_grad_(False)
    log_alpha = torch.zeros(1, device=device, requires_grad=True)
    actor_opt, critic_opt = nets.Adam(actor.parameters(), args.lr), nets.Adam(critics.parameters(), args.lr)
    alpha_opt = nets.Adam([log_alpha], args.lr)

    def update(b: dict) -> dict:
        alpha = log_alpha.exp().detach()
        # y = r + gamma (1 - terminated) (min_j Q'_j(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
        with torch.no_grad():
            a2, logp2 = actor.sample(b["next_obs"])
            y = b["rew"] + args.gamma * (1 - b["term"]) * (targets(b["next_obs"], a2).min(0).values - alpha * logp2)
        critic_loss = (critics(b["obs"], b["act"]) - y).pow(2).mean(-1).sum()  # sum of the twins' MSEs
        critic_opt.descend(critic_loss)
        a, logp = actor.sample(b["obs"])  # actor: min E[alpha log pi(a|s) - min_j Q_j(s, a)]
        actor_loss = (alpha * logp - critics(b["obs"], a).min(0).values).mean()
        actor_opt.descend(actor_loss)
        alpha_opt.descend(-(log_alpha * (logp.detach() - spec.act_dim)).mean())  # H_target = -dim(A)
        with torch.no_grad():  # Polyak: theta' <- (1 - tau) theta' + tau theta
            torch._foreach_lerp_(list(targets.parameters()), list(critics.parameters()), args.tau)
        return {"losses/critic": critic_loss.detach(), "losses/actor": actor_loss.detach(), "alpha": alpha,
                "reward_mean": b["rew"].mean()}  # fmt: skip

    update = nets.maybe_compile(update, args.compile, args.total_steps, args.cudagraphs)
    rb = nets.make_replay_buffer(args.buffer_size, args.batch_size, device)
    run.restore({"actor": actor, "critics": critics, "targets": targets, "log_alpha": log_alpha,
                 "actor_opt": actor_opt, "critic_opt": critic_opt, "alpha_opt": alpha_opt, "replay": rb,
                 "recent": reward_fn.ring, "recent_count": reward_fn.seen})  # fmt: skip
    env = envs.make_vec_env(spec.env_id, 1)
    env.single_action_space.seed(args.seed + run.start)
    obs = env.reset(seed=args.seed + run.start)[0]  # a resumed run starts a new episode
    bar, metrics, evaluation = runs.progress(args.total_steps, "density-sac", run.start), {}, {}
    for step in range(run.start + 1, args.total_steps + 1):
        if step <= args.learning_starts:
            action = np.array([env.single_action_space.sample()])
        else:
            with torch.no_grad():
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()
        next_obs, _, term, _, info = env.step(action)  # the true reward is not kept
        row = {
            "obs": obs.astype(np.float32),
            "act": action.astype(np.float32),
            "next_obs": envs.true_next_obs(next_obs, info).astype(np.float32),
            "term": term.astype(np.float32),
        }
        row = nets.to_tensordict(row, device)  # fmt: skip
        rb.extend(row)
        reward_fn.observe(features(row["obs"], row["act"], row["next_obs"], args.density_on), step)
        obs = next_obs
        bar.update(1)
        if step > args.learning_starts:
            b = rb.sample()
            b = {k: b[k] for k in ("obs", "act", "next_obs", "term")}
            with torch.no_grad():  # rewards from the current model(s), when the transition is replayed
                b["rew"] = reward_fn(features(b["obs"], b["act"], b["next_obs"], args.density_on))
            metrics = update(b)
        if step % args.log_every == 0 and metrics:
            run.log(step, metrics, env_steps=step)
        if step % args.eval_every == 0 or step == args.total_steps:
            evaluation = envs.evaluate(envs.numpy_policy(actor, device), spec.env_id, args.eval_episodes, args.seed)
            run.log(step, evaluation, env_steps=step)
        run.tick(step)
    bar.close()
    return evaluation


def train_ppo(args: Args, spec: envs.EnvSpec, device: torch.device, actor: nn.Module, reward_fn: DensityReward,
              run: runs.Run) -> dict:  # fmt: skip
    """On-policy: roll out, label the rollout with r(x), PPO epochs."""
    critic = nets.mlp(spec.obs_dim, 1, args.hidden).to(device)
    params = list(actor.parameters()) + list(critic.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, eps=1e-5)
    run.restore({"actor": actor, "critic": critic, "optimizer": optimizer, "recent": reward_fn.ring,
                 "recent_count": reward_fn.seen})  # fmt: skip
    vec_env = envs.make_vec_env(spec.env_id, args.num_envs)
    obs = vec_env.reset(seed=args.seed + run.start)[0]
    n, T = args.num_envs, args.num_steps

    def log_prob(o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log pi(a|s); continuous actions are stored as pre-tanh samples u."""
        if spec.discrete:
            return torch.distributions.Categorical(logits=actor(o)).log_prob(a.long())
        mean, log_std = actor(o)
        return actor.log_prob_of_pre_tanh(a, mean, log_std)

    def update(o: torch.Tensor, a: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, ret: torch.Tensor) -> dict:
        ratio = (log_prob(o, a) - logp_old).exp()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        # L_clip = -E[min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)],  L_V = 0.5 E[(V(s) - R)^2]
        pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef) * adv).mean()
        v_loss = 0.5 * (critic(o).squeeze(-1) - ret).pow(2).mean()
        optimizer.zero_grad()
        (pg_loss + args.vf_coef * v_loss).backward()
        nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        return {"losses/policy": pg_loss.detach(), "losses/value": v_loss.detach()}

    step, next_eval, evaluation = run.start, (run.start // args.eval_every + 1) * args.eval_every, {}
    bar = runs.progress(args.total_steps, "density-ppo", step)
    while step < args.total_steps:
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.lr * (1 - step / args.total_steps)
        rows: dict[str, list] = {k: [] for k in ("obs", "act", "logp", "next_obs", "term", "trunc")}
        for _ in range(T):
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            with torch.no_grad():
                if spec.discrete:
                    a = torch.distributions.Categorical(logits=actor(o)).sample()
                    env_action = a.cpu().numpy()
                else:
                    mean, log_std = actor(o)
                    a = mean + log_std.exp() * torch.randn_like(mean)
                    env_action = (actor.bias + actor.scale * torch.tanh(a)).cpu().numpy()
                logp = log_prob(o, a)
            next_obs, _, term, trunc, info = vec_env.step(env_action)  # the true reward is not kept
            for k, v in zip(rows, (obs, a.cpu().numpy(), logp.cpu().numpy(), envs.true_next_obs(next_obs, info),
                                   term, trunc & ~term), strict=True):  # fmt: skip
                rows[k].append(v)
            obs = next_obs
        step += n * T
        bar.update(n * T)
        t = {k: torch.as_tensor(np.stack(v), device=device).flatten(0, 1) for k, v in rows.items()}  # time-major
        o, o2, logp_t = t["obs"].float(), t["next_obs"].float(), t["logp"]
        act_vec = nn.functional.one_hot(t["act"], spec.act_dim).float() if spec.discrete else (
            actor.bias + actor.scale * torch.tanh(t["act"]))  # the env's action  # fmt: skip
        x = features(o, act_vec, o2, args.density_on)
        reward_fn.observe(x, step)
        term, trunc = t["term"].view(T, n).float(), t["trunc"].view(T, n).float()
        with torch.no_grad():
            reward = reward_fn(x).view(T, n)
            value, next_value = critic(o).view(T, n), critic(o2).view(T, n) * (1 - term)  # terminal values masked
        # GAE: delta_t = r_t + gamma V(s'_t) - V(s_t);  A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}
        done, adv, last = torch.maximum(term, trunc), torch.zeros(T, n, device=device), torch.zeros(n, device=device)
        delta = reward + args.gamma * next_value - value
        for i in reversed(range(T)):
            last = delta[i] + args.gamma * args.gae_lambda * (1 - done[i]) * last
            adv[i] = last
        ret, adv = (adv + value).flatten(), adv.flatten()
        for _ in range(args.update_epochs):
            for idx in torch.randperm(T * n, device=device).split(args.batch_size):
                metrics = update(o[idx], t["act"][idx], logp_t[idx], adv[idx], ret[idx])
        run.log(step, metrics | {"reward_mean": reward.mean()}, env_steps=step)
        if step >= next_eval or step >= args.total_steps:
            next_eval += args.eval_every
            evaluation = envs.evaluate(envs.numpy_policy(actor, device), spec.env_id, args.eval_episodes, args.seed)
            run.log(step, evaluation, env_steps=step)
        run.tick(step)
    bar.close()
    return evaluation


# ------------------------------------------------------------ main (the loop and its run plumbing)
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    generator = args.generator or ("ppo" if spec.discrete else "sac")
    if generator == "sac" and spec.discrete:
        raise envs.CleanILError(f"--generator sac needs continuous actions; {env_id} has discrete ones: use ppo")
    if args.bandwidth is not None and args.bandwidth <= 0:
        raise envs.CleanILError(f"--bandwidth must be positive, got {args.bandwidth}")
    if args.ratio and (args.policy_samples < 2 or args.refit_every < 1):
        raise envs.CleanILError("--ratio needs --policy-samples >= 2 and --refit-every >= 1")
    runs.check_budget(args, off_policy=generator == "sac")
    runs.set_seed(args.seed)
    with_actions = args.density_on == "sa"  # on s or ss the demos need no actions (and they are dropped)
    demos = envs.load_demos(env_id, args.num_demos, args.demos, actions=with_actions)
    args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json
    e = {k: torch.as_tensor(demos[k], device=device) for k in ("obs", "next_obs")}
    if with_actions:
        act = torch.as_tensor(demos["actions"], device=device)
        act = nn.functional.one_hot(act, spec.act_dim).float() if spec.discrete else act
    else:  # not read by features() on s or ss
        act = torch.zeros(len(e["obs"]), spec.act_dim, device=device)
    reward_fn = DensityReward(features(e["obs"], act, e["next_obs"], args.density_on), args)
    print(f"density of {len(act)} expert transitions on {args.density_on}: d = {reward_fn.expert.z.shape[1]}, "
          f"bandwidth {reward_fn.expert.h:.3f}, floor {reward_fn.expert.floor.item():.2f}")  # fmt: skip

    run = runs.Run(args, f"density_{generator}", env_id, args.total_steps)
    actor = envs.make_actor(spec, args.hidden).to(device)
    train = train_sac if generator == "sac" else train_ppo
    final = train(args, spec, device, actor, reward_fn, run)
    if args.save_model:
        envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="density")
        blob = {"points": reward_fn.expert.z * reward_fn.expert.std + reward_fn.expert.mean, "density_on":
                args.density_on, "bandwidth": reward_fn.expert.h}  # fmt: skip
        envs.atomic_torch_save(blob, run.dir / "density.pt")
    run.record_video(envs.numpy_policy(actor, device))
    run.close()
    return final


if __name__ == "__main__":
    runs.run_cli(main, Args, "density")
