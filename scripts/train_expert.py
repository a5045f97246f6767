"""Train an expert policy with cleanil's own RL code: a user's own (under $CLEANIL_CACHE/experts) or one to
ship under cleanil/experts/ (--out-dir cleanil/experts).

- PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) or DQN (Mnih et al. 2015,
  https://doi.org/10.1038/nature14236) for discrete actions; SAC (Haarnoja et al. 2018,
  https://arxiv.org/abs/1812.05905) or PPO (a tanh-squashed Gaussian, its pre-tanh sample stored) for
  continuous ones.
- Evaluates every ``--eval-every`` env steps and keeps the best policy by evaluation return
  (runs/<run>/best.pt); writes a full checkpoint (networks, optimizers, replay buffer, RNG states,
  counters) every ``--checkpoint-every`` env steps and on Ctrl-C/SIGTERM, so ``--resume runs/<run>``
  continues an interrupted run and appends to its metrics.jsonl.
- At the end the best policy is scored over ``--final-eval-episodes`` deterministic episodes on
  reset seeds disjoint from demo and evaluation seeds, with the random policy's return, and written
  to ``<out-dir>/<EnvId>.pt`` with metadata ``<EnvId>.json`` -- only if it beats the expert already
  there (or ``--replace``).

Per-env hyperparameters live in configs/train_expert/<EnvId>.yaml and are picked up automatically.

Run: python scripts/train_expert.py --env CartPole
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from cleanil import envs, nets, runs


@dataclass
class Args:
    env: str = "CartPole"
    """environment: an alias (CartPole, Pendulum, HalfCheetah, ...), a gymnasium id, or module:EnvName-v0 for an
    env that the module registers on import"""
    env_kwargs: str = "{}"
    """keyword arguments of the env (gymnasium.make) as a JSON object, e.g. '{"ctrl_cost_weight": 0.2}'"""
    capture_video: bool = False
    """record one deterministic evaluation episode of the best policy to runs/<run>/videos/final.mp4"""
    algo: Literal["ppo", "dqn", "sac"] | None = None
    """RL algorithm: ppo (any actions), dqn (discrete), sac (continuous); None picks sac for continuous and ppo
    for discrete actions"""
    seed: int = 0
    """random seed"""
    device: str = "auto"
    """torch device: auto, cpu or cuda"""
    total_steps: int = 100_000
    """environment steps to train for"""
    eval_every: int = 10_000
    """evaluate (and maybe keep as best) every this many env steps"""
    eval_episodes: int = 10
    """episodes per evaluation during training"""
    final_eval_episodes: int = 50
    """episodes to score the best policy (and the random policy) for the metadata"""
    log_every: int = 1_000
    """log losses every this many env steps (off-policy; PPO logs after every rollout)"""
    checkpoint_every: int = 50_000
    """write runs/<run>/checkpoint.pt every this many env steps; also at the end and on Ctrl-C/SIGTERM"""
    resume: str | None = None
    """run directory (runs/<name>) to continue from its last checkpoint, with its saved settings as defaults"""
    out_dir: str | None = None
    """where to write <EnvId>.pt and <EnvId>.json; default: the user's experts, $CLEANIL_CACHE/experts
    (~/.cache/cleanil/experts), where every script looks for experts the package does not ship;
    the package's own experts are written with --out-dir cleanil/experts"""
    replace: bool = False
    """replace an existing expert even if the new one scores lower"""
    run_dir: str = "runs"
    """folder under which each run gets its own directory"""
    run_name: str | None = None
    """name of the run's directory under run_dir (default: <env>__expert_<algo>__<seed>__<unix time>)"""
    overwrite: bool = False
    """replace an existing run directory of that name (without it, the run refuses to start)"""
    track: bool = False
    """log to Weights & Biases"""
    wandb_project: str = "cleanil"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of every network"""
    lr: float = 3e-4
    """learning rate"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 256
    """minibatch size (off-policy) or PPO minibatch size"""
    # off-policy (DQN, SAC)
    buffer_size: int = 1_000_000
    """replay capacity"""
    learning_starts: int = 5_000
    """env steps of random actions before learning starts"""
    train_freq: int = 1
    """env steps between rounds of updates"""
    gradient_steps: int = 1
    """updates per round"""
    tau: float = 0.005
    """Polyak rate of the target networks (SAC; DQN copies every target_update steps)"""
    # DQN
    target_update: int = 500
    """env steps between target network copies (DQN)"""
    exploration_fraction: float = 0.1
    """share of training over which epsilon decays linearly from 1 (DQN)"""
    final_eps: float = 0.05
    """final epsilon (DQN)"""
    # PPO
    num_envs: int = 8
    """parallel envs (PPO)"""
    num_steps: int = 128
    """steps per env per rollout (PPO)"""
    update_epochs: int = 10
    """optimization epochs per rollout (PPO)"""
    gae_lambda: float = 0.95
    """GAE lambda (PPO)"""
    clip_coef: float = 0.2
    """policy ratio clip (PPO)"""
    ent_coef: float = 0.0
    """entropy bonus (PPO)"""
    vf_coef: float = 0.5
    """value loss weight (PPO)"""
    max_grad_norm: float = 0.5
    """gradient clipping (PPO)"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 (PPO)"""
    compile: bool | None = None
    """torch.compile SAC's whole update as one graph; None: only when the run makes >= 20k updates"""


# ----------------------------------------------------------------------------- checkpoints
class Run:
    """Counters, evaluation and best-policy tracking shared by the three trainers, around runs.Run
    (checkpoints, --resume, Ctrl-C/SIGTERM, the NaN guard)."""

    def __init__(self, args: Args, spec: envs.EnvSpec, algo: str):
        self.args, self.spec = args, spec
        self.logger = runs.Run(args, f"expert_{algo}", spec.env_id, args.total_steps)
        self.dir, self.step, self.best = self.logger.dir, self.logger.start, -float("inf")
        self.next_eval = (self.step // args.eval_every + 1) * args.eval_every

    def restore(self, objects: dict) -> None:
        """Register ``objects`` (networks, optimizers, replay buffer) and load them when resuming."""
        saved = self.logger.restore(objects, lambda: {"best": self.best})
        self.best = saved["best"] if saved else self.best

    def tick(self, actor: torch.nn.Module, device: torch.device) -> None:
        """Call after each env step (PPO: each rollout): evaluate, keep the best policy, checkpoint when due."""
        if self.step >= self.next_eval or self.step >= self.args.total_steps:
            self.next_eval += self.args.eval_every
            policy = envs.numpy_policy(actor, device)
            metrics = envs.evaluate(policy, self.spec.env_id, self.args.eval_episodes, self.args.seed)
            self.logger.log(self.step, metrics, env_steps=self.step)
            if metrics["eval/return"] > self.best:
                self.best = metrics["eval/return"]
                envs.save_policy(self.dir / "best.pt", actor, self.spec, self.args.hidden)
        self.logger.tick(self.step)


# ----------------------------------------------------------------------------- PPO
def ppo_sample(actor: torch.nn.Module, obs: torch.Tensor, discrete: bool, action: torch.Tensor | None = None) -> tuple:
    """(action, log pi(action|s), entropy), sampling the action if none is given. Continuous actions are the
    pre-tanh Gaussian sample u (the env gets bias + scale tanh(u)); the entropy is the Gaussian's of u."""
    if discrete:
        dist = torch.distributions.Categorical(logits=actor(obs))
        action = dist.sample() if action is None else action
        return action, dist.log_prob(action), dist.entropy()
    mean, log_std = actor(obs)
    action = mean + log_std.exp() * torch.randn_like(mean) if action is None else action
    entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
    return action, actor.log_prob_of_pre_tanh(action, mean, log_std), entropy


def train_ppo(args: Args, spec: envs.EnvSpec, device: torch.device, run: Run) -> torch.nn.Module:
    actor = envs.make_actor(spec, args.hidden).to(device)
    critic = nets.mlp(spec.obs_dim, 1, args.hidden).to(device)
    params = list(actor.parameters()) + list(critic.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, eps=1e-5)
    vec_env = envs.make_vec_env(spec.env_id, args.num_envs)
    run.restore({"actor": actor, "critic": critic, "optimizer": optimizer})
    obs = torch.as_tensor(vec_env.reset(seed=args.seed + run.step)[0], dtype=torch.float32, device=device)
    n, T = args.num_envs, args.num_steps
    bar = runs.progress(args.total_steps, "ppo", run.step)
    while run.step < args.total_steps:
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.lr * (1 - run.step / args.total_steps)
        buf = {k: torch.zeros(T, n, device=device) for k in ("logp", "rew", "done", "val")}
        buf["obs"] = torch.zeros(T, n, spec.obs_dim, device=device)
        buf["act"] = torch.zeros(T, n, dtype=torch.long, device=device) if spec.discrete else torch.zeros(
            T, n, spec.act_dim, device=device)  # fmt: skip
        for t in range(T):
            with torch.no_grad():
                action, logp, _ = ppo_sample(actor, obs, spec.discrete)
                env_action = action if spec.discrete else actor.bias + actor.scale * torch.tanh(action)
                buf["val"][t] = critic(obs).squeeze(-1)
            next_obs, rew, term, trunc, info = vec_env.step(env_action.cpu().numpy())
            rew = torch.as_tensor(rew, dtype=torch.float32, device=device)
            if trunc.any():  # a time-limit end is not a real end: bootstrap from the final observation
                final = torch.as_tensor(envs.true_next_obs(next_obs, info), dtype=torch.float32, device=device)
                with torch.no_grad():
                    rew += args.gamma * critic(final).squeeze(-1) * torch.as_tensor(trunc & ~term, device=device)
            buf["obs"][t], buf["act"][t], buf["logp"][t] = obs, action, logp
            buf["rew"][t], buf["done"][t] = rew, torch.as_tensor(term | trunc, dtype=torch.float32)
            obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
            run.step += n
            bar.update(n)
        # GAE: delta_t = r_t + gamma V(s_{t+1}) (1 - d_t) - V(s_t), A_t = delta_t + gamma lambda (1 - d_t) A_{t+1}
        with torch.no_grad():
            next_val = critic(obs).squeeze(-1)
        adv, last = torch.zeros_like(buf["rew"]), torch.zeros(n, device=device)
        for t in reversed(range(T)):
            nv = next_val if t == T - 1 else buf["val"][t + 1]
            delta = buf["rew"][t] + args.gamma * nv * (1 - buf["done"][t]) - buf["val"][t]
            last = delta + args.gamma * args.gae_lambda * (1 - buf["done"][t]) * last
            adv[t] = last
        ret = adv + buf["val"]
        flat = {k: v.reshape(T * n, *v.shape[2:]) for k, v in buf.items()} | {
            "adv": adv.flatten(),
            "ret": ret.flatten(),
        }
        for _ in range(args.update_epochs):
            for idx in torch.randperm(T * n).split(args.batch_size):
                _, logp, entropy = ppo_sample(actor, flat["obs"][idx], spec.discrete, flat["act"][idx])
                ratio = (logp - flat["logp"][idx]).exp()
                a = flat["adv"][idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                # L_clip = -E[min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)]
                pg_loss = -torch.min(ratio * a, ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef) * a).mean()
                v_loss = 0.5 * (critic(flat["obs"][idx]).squeeze(-1) - flat["ret"][idx]).pow(2).mean()
                loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
        run.logger.log(run.step, {"losses/policy": pg_loss.item(), "losses/value": v_loss.item()}, run.step)
        run.tick(actor, device)
    bar.close()
    return actor


# ----------------------------------------------------------------------------- DQN and SAC share the replay loop
def off_policy_loop(args: Args, spec: envs.EnvSpec, device: torch.device, run: Run, act_fn, update_fn,
                    actor: torch.nn.Module, modules: dict, name: str) -> None:  # fmt: skip
    """Step one env, store (s, a, r, s', terminated), call ``update_fn(batch)`` when due."""
    rb = nets.make_replay_buffer(args.buffer_size, args.batch_size, device)
    run.restore(modules | {"replay": rb})
    env = envs.make_vec_env(spec.env_id, 1)
    env.single_action_space.seed(args.seed + run.step)
    obs = env.reset(seed=args.seed + run.step)[0]
    bar = runs.progress(args.total_steps, name, run.step)
    metrics: dict = {}
    while run.step < args.total_steps:
        if run.step < args.learning_starts:
            action = np.array([env.single_action_space.sample()])
        else:
            action = act_fn(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        next_obs, rew, term, trunc, info = env.step(action)
        real_next = envs.true_next_obs(next_obs, info)
        rb.extend(nets.to_tensordict({"obs": obs.astype(np.float32), "act": action, "rew": rew.astype(np.float32),
                                       "next_obs": real_next.astype(np.float32), "term": term.astype(np.float32)},
                                      device))  # fmt: skip
        obs = next_obs
        run.step += 1
        bar.update(1)
        if run.step >= args.learning_starts and run.step % args.train_freq == 0:
            for _ in range(args.gradient_steps):
                metrics = update_fn(rb.sample())
            if run.step % args.log_every < args.train_freq:
                run.logger.log(run.step, {k: v.item() for k, v in metrics.items()}, run.step)
        run.tick(actor, device)
    bar.close()


def train_dqn(args: Args, spec: envs.EnvSpec, device: torch.device, run: Run) -> torch.nn.Module:
    if not spec.discrete:
        raise envs.CleanILError("DQN needs discrete actions; use --algo sac")
    q = nets.CategoricalActor(spec.obs_dim, spec.act_dim, args.hidden).to(device)  # logits = Q-values
    q_target = copy.deepcopy(q)
    optimizer = torch.optim.Adam(q.parameters(), lr=args.lr)
    decay_steps = max(1, int(args.exploration_fraction * args.total_steps))

    def act(obs: torch.Tensor) -> torch.Tensor:
        eps = max(args.final_eps, 1 - (1 - args.final_eps) * run.step / decay_steps)
        if random.random() < eps:
            return torch.randint(spec.act_dim, (len(obs),))
        with torch.no_grad():
            return q(obs).argmax(-1)

    def update(b: TensorDict) -> dict:
        # y = r + gamma (1 - terminated) max_a' Q_target(s', a');  Huber(Q(s, a) - y)
        with torch.no_grad():
            y = b["rew"] + args.gamma * (1 - b["term"]) * q_target(b["next_obs"]).max(-1).values
        q_sa = q(b["obs"]).gather(-1, b["act"].long().unsqueeze(-1)).squeeze(-1)
        loss = F.smooth_l1_loss(q_sa, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(q.parameters(), 10.0)
        optimizer.step()
        if run.step % args.target_update < args.train_freq:
            q_target.load_state_dict(q.state_dict())
        return {"losses/q": loss.detach(), "q_mean": q_sa.mean().detach()}

    modules = {"q": q, "q_target": q_target, "optimizer": optimizer}
    off_policy_loop(args, spec, device, run, act, update, q, modules, "dqn")
    return q


def train_sac(args: Args, spec: envs.EnvSpec, device: torch.device, run: Run) -> torch.nn.Module:
    if spec.discrete:
        raise envs.CleanILError("train_expert's SAC handles continuous actions only; use --algo ppo or dqn")
    actor = nets.TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, args.hidden)
    actor = actor.to(device)
    critics = nets.TwinQNetwork(spec.obs_dim, spec.act_dim, args.hidden).to(device)  # [2, batch] Q-values
    targets = copy.deepcopy(critics).requires_grad_(False)
    temperature = torch.nn.ParameterDict({"log_alpha": torch.nn.Parameter(torch.zeros(1, device=device))})
    log_alpha = temperature["log_alpha"]
    target_entropy = -float(spec.act_dim)
    actor_opt, critic_opt = nets.Adam(actor.parameters(), args.lr), nets.Adam(critics.parameters(), args.lr)
    alpha_opt = nets.Adam([log_alpha], args.lr)

    def act(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return actor.sample(obs)[0]

    def update(b: dict) -> dict:
        alpha = log_alpha.exp().detach()
        # y = r + gamma (1 - terminated) (min_j Q_target_j(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
        with torch.no_grad():
            a2, logp2 = actor.sample(b["next_obs"])
            y = b["rew"] + args.gamma * (1 - b["term"]) * (targets(b["next_obs"], a2).min(0).values - alpha * logp2)
        critic_loss = (critics(b["obs"], b["act"]) - y).pow(2).mean(-1).sum()  # sum of the twins' MSEs
        critic_opt.descend(critic_loss)
        # actor: min E[alpha log pi(a|s) - min_j Q_j(s, a)];  temperature: min E[-alpha (log pi + H_target)]
        a, logp = actor.sample(b["obs"])
        actor_loss = (alpha * logp - critics(b["obs"], a).min(0).values).mean()
        actor_opt.descend(actor_loss)
        alpha_opt.descend(-(log_alpha * (logp.detach() + target_entropy)).mean())
        with torch.no_grad():  # Polyak: theta_target <- (1 - tau) theta_target + tau theta
            torch._foreach_lerp_(list(targets.parameters()), list(critics.parameters()), args.tau)
        return {"losses/critic": critic_loss.detach(), "losses/actor": actor_loss.detach(), "alpha": alpha}

    compiled = nets.maybe_compile(update, args.compile, args.total_steps - args.learning_starts)
    modules = {"actor": actor, "critics": critics, "targets": targets, "actor_opt": actor_opt,
               "critic_opt": critic_opt, "alpha_opt": alpha_opt, "temperature": temperature}  # fmt: skip
    off_policy_loop(args, spec, device, run, act, lambda b: compiled(dict(b.items())), actor, modules, "sac")
    return actor


# ----------------------------------------------------------------------------- main
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    algo = args.algo or ("ppo" if spec.discrete else "sac")
    runs.set_seed(args.seed)
    run = Run(args, spec, algo)
    start = time.time()
    {"ppo": train_ppo, "dqn": train_dqn, "sac": train_sac}[algo](args, spec, device, run)
    train_seconds = time.time() - run.logger.start_time

    # score the best policy and the random policy on seeds used nowhere else
    best = envs.load_policy(run.dir / "best.pt", spec).to(device)
    seeds = envs.EXPERT_EVAL_SEED_BASE
    expert = envs.rollout(envs.numpy_policy(best, device), env_id, args.final_eval_episodes, seeds)["returns"]
    space = gym.vector.utils.batch_space(envs.make_env(env_id).action_space, envs.ROLLOUT_CHUNK)
    space.seed(args.seed)
    rand = envs.rollout(lambda obs: space.sample(), env_id, args.final_eval_episodes, seeds)["returns"]
    meta = {"env_id": env_id, "env_kwargs": envs.ENV_KWARGS[env_id], "algo": algo,
            "return_mean": float(expert.mean()), "return_std": float(expert.std()),
            "random_return_mean": float(rand.mean()), "random_return_std": float(rand.std()),
            "eval_episodes": args.final_eval_episodes, "total_steps": args.total_steps,
            "wall_clock_s": round(train_seconds, 1), "train_seconds_this_session": round(time.time() - start, 1),
            "command": "python " + json.loads((run.dir / "config.json").read_text())["command"],
            "resumed_with": "python scripts/train_expert.py " + " ".join(sys.argv[1:]) if args.resume else None,
            "seed": args.seed,
            "hidden": list(args.hidden), "git": runs.git_revision(), "versions": runs.versions(),
            "machine": runs.machine()}  # fmt: skip
    print(f"{env_id}: expert {meta['return_mean']:.1f} +- {meta['return_std']:.1f}, random {rand.mean():.1f} "
          f"over {args.final_eval_episodes} episodes")  # fmt: skip
    (run.dir / "expert.json").write_text(json.dumps(meta, indent=2))
    run.logger.record_video(envs.numpy_policy(best, device))
    out_dir = Path(args.out_dir) if args.out_dir else envs.expert_dirs()[1]
    out_pt, out_json = out_dir / f"{env_id}.pt", out_dir / f"{env_id}.json"
    old = json.loads(out_json.read_text())["return_mean"] if out_json.exists() else -float("inf")
    if args.replace or meta["return_mean"] > old:
        out_pt.parent.mkdir(parents=True, exist_ok=True)
        envs.save_policy(out_pt, best, spec, args.hidden)
        out_json.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {out_pt} and {out_json}")
        if (envs.EXPERT_DIR / out_json.name).exists() and envs.EXPERT_DIR.resolve() != out_dir.resolve():
            print(f"note: cleanil ships an expert for {env_id}, which the scripts use before this one")
    else:
        print(f"kept the existing expert in {out_dir} ({old:.1f} >= {meta['return_mean']:.1f}); --replace forces")
    run.logger.close()
    return meta


if __name__ == "__main__":
    runs.run_cli(main, Args, "train_expert")
