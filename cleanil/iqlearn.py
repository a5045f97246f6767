"""IQ-Learn: inverse soft-Q learning for imitation, online or offline, discrete or continuous actions.

Garg, Chakraborty, Cundy, Song, Geist & Ermon (2021), "IQ-Learn: Inverse soft-Q Learning for
Imitation", NeurIPS, https://arxiv.org/abs/2106.12142.

One soft Q-function stands for both the reward and the policy. With V^pi(s) = E_{a~pi}[Q(s, a) -
alpha log pi(a|s)] and the implied reward r(s, a) = Q(s, a) - gamma E_{s'}[V^pi(s')], IQ-Learn
maximizes over Q, for the chi-squared divergence (phi(x) = x - x^2 / (4 a), a = --chi-alpha):

    J(Q) = E_{rho_E}[ Q(s, a) - gamma V(s') ] - (value term) - 1 / (4 a) E[ (Q(s, a) - gamma V(s'))^2 ]

with V(s') masked at terminations. The value term is one of (``--value-loss``):
    value: E_{rho}[ V(s) - gamma V(s') ]   over the batch (expert and policy samples online,
           expert samples offline): a telescoped, lower-variance estimate of (1 - gamma) E[V(s0)]
    v0:    (1 - gamma) E_{s0}[ V(s0) ]     with the batch's expert states standing in for the
           initial-state distribution, as in the authors' code
The chi-squared term is taken over expert samples offline and over the whole batch online (the
authors' "regularize" setting for online runs).

- Discrete actions: Q is a network with one output per action; V(s) = alpha logsumexp(Q(s, .) / alpha)
  and pi = softmax(Q / alpha): there is no separate policy.
- Continuous actions: twin soft Q-networks (each trained on the loss, V from their minimum; one with
  --num-critics 1, the authors' setting for Hopper and HalfCheetah) and a
  tanh-Gaussian actor updated as in SAC, min E[alpha log pi(a|s) - min_j Q_j(s, a)], at a fixed
  temperature alpha (--init-temp; a learned temperature is optional and reported unstable by the
  authors). Per-env defaults (value loss, alpha, actor lr) are in configs/iqlearn/.
- Online (default): every env step adds a policy transition to a replay buffer, and each update
  mixes half expert and half policy samples. Offline (--offline): expert data only, no env steps.
- V(s') uses Polyak-averaged target networks (--use-target).
- The recovered reward r = Q(s, a) - gamma V(s') is scored against the env's true reward two ways
  (Pearson correlations): per transition on held-out expert transitions (reward/pearson_heldout, at
  every evaluation; --heldout-demos episodes after the imitated ones, skipped when there are none),
  and per episode, as in the authors' code, between the recovered and the true
  returns of --reward-episodes episodes of the final policy (reward/pearson_episodes, at the end).
  The Q network(s) and actor are saved to runs/<run>/reward.pt, from which r can be recomputed.

Run: python cleanil/iqlearn.py --env CartPole  (settings from configs/iqlearn/CartPole-v1.yaml: offline, one
demonstration, 3k updates; normalized ~1.0 in under a minute)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/iqlearn/<EnvId>.yaml overrides them for that env (its file is printed at start),
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
    total_steps: int = 300_000
    """environment steps (online) or gradient updates (offline)"""
    num_demos: int | None = None
    """expert episodes to imitate (the first ones of --demos); default: every episode of --demos that
    --heldout-demos leaves, else 10"""
    demos: str | None = None
    """path to a .npz demo file; by default demos are generated from the shipped expert (and cached)"""
    eval_every: int = 10_000
    """evaluate the policy every this many steps (and at the end)"""
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
    """save the policy to runs/<run>/model.pt and the Q network(s) to runs/<run>/reward.pt"""
    run_dir: str = "runs"
    """folder under which each run gets its own directory"""
    run_name: str | None = None
    """name of the run's directory under run_dir (default: <env>__<algo>__<seed>__<unix time>)"""
    overwrite: bool = False
    """replace an existing run directory of that name (without it, the run refuses to start)"""
    resume: str | None = None
    """run directory (runs/<name>) to continue from its checkpoint, with its saved settings as defaults"""
    checkpoint_every: int = 10_000
    """write runs/<run>/checkpoint.pt every this many steps; also at the end and on Ctrl-C/SIGTERM"""
    # ---- the algorithm: IQ-Learn
    offline: bool = False
    """learn from the expert data alone, without env interaction"""
    value_loss: Literal["value", "v0"] = "value"
    """value term: value = E[V(s) - gamma V(s')] over the batch; v0 = (1 - gamma) E[V(s0)]"""
    chi_alpha: float = 0.5
    """a in the chi-squared regularizer 1 / (4 a) E[(Q - gamma V')^2]"""
    init_temp: float = 0.01
    """entropy temperature alpha of the soft Q-function and policy"""
    learn_temp: bool = False
    """learn alpha toward the target entropy -dim(A) (continuous actions only; reported unstable)"""
    critic_lr: float = 3e-4
    """learning rate of the Q network(s)"""
    actor_lr: float = 3e-5
    """learning rate of the actor (continuous actions)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of every network"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 256
    """minibatch size (online: half expert, half policy)"""
    num_critics: int = 1
    """continuous actions: soft Q-networks, each trained on the loss, V from their minimum (1 or 2)"""
    use_target: bool = True
    """compute V(s') with Polyak-averaged target Q network(s)"""
    tau: float = 0.005
    """Polyak rate of the target network(s)"""
    buffer_size: int = 1_000_000
    """replay capacity (online)"""
    learning_starts: int = 1_280
    """online: env steps of random actions before updates start"""
    heldout_demos: int | None = None
    """expert episodes after the imitated ones, held out to score the recovered reward (0: skip the scoring);
    default: 5, or with --demos as many of the file's episodes beyond --num-demos as there are, up to 5"""
    reward_episodes: int = 20
    """episodes of the final policy whose recovered and true returns are correlated (0: skip)"""
    log_every: int = 1_000
    """log losses every this many steps"""


# -------------------------------------------------------------------------- losses (the algorithm)
def iq_loss(
    q: torch.Tensor,
    v: torch.Tensor,
    next_v: torch.Tensor,
    done: torch.Tensor,
    is_expert: torch.Tensor,
    gamma: float,
    value_loss: str,
    chi_alpha: float,
    regularize_all: bool,
) -> tuple[torch.Tensor, dict]:
    """-J(Q) on a batch of Q(s, a), V(s), V(s'), termination flags and expert flags (1 = expert row).

    r = Q(s, a) - gamma (1 - done) V(s')                               implied reward
    loss = -E_E[r] + value term + 1 / (4 a) E_{E or all}[r^2]
    value term: E_all[V(s) - gamma (1 - done) V(s')] ("value") or (1 - gamma) E_E[V(s)] ("v0")
    """
    y = gamma * (1 - done) * next_v
    r = q - y
    e = is_expert / is_expert.sum().clamp_min(1)  # weights of a mean over expert rows
    softq = -(r * e).sum()
    value = (v - y).mean() if value_loss == "value" else (1 - gamma) * (v * e).sum()
    chi2 = (r**2).mean() if regularize_all else (r**2 * e).sum()
    chi2 = chi2 / (4 * chi_alpha)
    return softq + value + chi2, {"losses/softq": softq.detach(), "losses/value": value.detach(),
                                  "losses/chi2": chi2.detach(), "expert_reward": (r * e).sum().detach()}  # fmt: skip


def soft_value_discrete(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """V(s) = alpha logsumexp_a(Q(s, a) / alpha), the soft maximum (pi = softmax(Q / alpha))."""
    return alpha * torch.logsumexp(q / alpha, dim=-1)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None (undefined) if either side is constant, e.g. CartPole's reward of 1 per step."""
    sx, sy = x.std(), y.std()
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else None


def episode_sums(reward: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Per-episode sums of consecutive episodes' step rewards; ``done`` marks each episode's last step."""
    starts = np.concatenate([[0], np.flatnonzero(done)[:-1] + 1])
    return np.add.reduceat(reward, starts)


# ------------------------------------------------------------------------ networks (the algorithm)
@dataclass
class Learner:
    """Everything IQ-Learn trains. Discrete actions: one Q network with an output per action, which is also
    the policy (pi = softmax(Q / alpha)); continuous: twin Q(s, a) networks and a tanh-Gaussian actor."""

    discrete: bool
    critics: nn.Module
    targets: nn.Module
    actor: nn.Module
    log_alpha: torch.Tensor
    critic_opt: nets.Adam
    actor_opt: nets.Adam | None
    alpha_opt: nets.Adam | None

    def state(self) -> dict:
        """What a checkpoint saves, by name."""
        names = ("critics", "targets", "actor", "log_alpha", "critic_opt", "actor_opt", "alpha_opt")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


def make_learner(spec: envs.EnvSpec, args: Args, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                 device: torch.device) -> Learner:  # fmt: skip
    if spec.discrete:
        q_net = nets.CategoricalActor(spec.obs_dim, spec.act_dim, args.hidden).to(device)  # logits = Q-values
        q_net.norm.mean.copy_(obs_mean)
        q_net.norm.std.copy_(obs_std)
        critics, actor = nn.ModuleList([q_net]), q_net
    else:
        critics = nets.TwinQNetwork(spec.obs_dim, spec.act_dim, args.hidden, args.num_critics).to(device)
        actor = nets.TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, args.hidden)
        actor = actor.to(device)
    log_alpha = torch.tensor([np.log(args.init_temp)], dtype=torch.float32, device=device, requires_grad=True)
    return Learner(spec.discrete, critics, copy.deepcopy(critics).requires_grad_(False), actor, log_alpha,
                   nets.Adam(critics.parameters(), args.critic_lr),
                   None if spec.discrete else nets.Adam(actor.parameters(), args.actor_lr),
                   nets.Adam([log_alpha], args.critic_lr) if args.learn_temp else None)  # fmt: skip


def q_values(m: Learner, critics: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> list[torch.Tensor]:
    """Q(s, a) of each critic (one if discrete, the twins otherwise)."""
    if m.discrete:
        return [critics[0](obs).gather(-1, act.long().unsqueeze(-1)).squeeze(-1)]
    return list(critics(obs, act))


def soft_value(m: Learner, critics: nn.Module, obs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """V(s): alpha logsumexp(Q / alpha) (discrete) or min_j Q_j(s, a) - alpha log pi(a|s), a ~ pi (continuous)."""
    if m.discrete:
        return soft_value_discrete(critics[0](obs), alpha)
    with torch.no_grad():
        a, logp = m.actor.sample(obs)
    return critics(obs, a).min(0).values - alpha * logp


@torch.no_grad()
def recovered_reward(m: Learner, b: dict, gamma: float) -> np.ndarray:
    """r(s, a) = Q(s, a) - gamma (1 - done) V(s'), from the online networks (the min of twin Qs)."""
    alpha = m.log_alpha.exp()
    q = torch.min(torch.stack(q_values(m, m.critics, b["obs"], b["act"])), 0).values
    return (q - gamma * (1 - b["done"]) * soft_value(m, m.critics, b["next_obs"], alpha)).cpu().numpy()


# -------------------------------------------------------------------------- update (the algorithm)
def update(m: Learner, b: dict, args: Args) -> dict:
    """One step on -J(Q) for the critic(s), then (continuous) the SAC-style actor and temperature."""
    alpha = m.log_alpha.exp().detach()
    with torch.no_grad() if args.use_target else torch.enable_grad():
        next_v = soft_value(m, m.targets if args.use_target else m.critics, b["next_obs"], alpha)
    v = soft_value(m, m.critics, b["obs"], alpha)
    losses = [iq_loss(q, v, next_v, b["done"], b["is_expert"], args.gamma, args.value_loss, args.chi_alpha,
                      not args.offline) for q in q_values(m, m.critics, b["obs"], b["act"])]  # fmt: skip
    loss = sum(twin_loss for twin_loss, _ in losses) / len(losses)  # each twin trained on its own loss
    m.critic_opt.descend(loss)
    metrics = losses[0][1] | {"losses/iq": loss.detach()}
    if not m.discrete:  # actor: min E[alpha log pi(a|s) - min_j Q_j(s, a)]
        a, logp = m.actor.sample(b["obs"])
        actor_loss = (alpha * logp - m.critics(b["obs"], a).min(0).values).mean()
        m.actor_opt.descend(actor_loss)
        metrics["losses/actor"] = actor_loss.detach()
        if m.alpha_opt is not None:  # temperature: min E[-alpha (log pi - dim(A))]
            m.alpha_opt.descend(-(m.log_alpha * (logp.detach() - a.shape[-1])).mean())
    with torch.no_grad():  # Polyak: theta' <- (1 - tau) theta' + tau theta
        torch._foreach_lerp_(list(m.targets.parameters()), list(m.critics.parameters()), args.tau)
    return metrics | {"alpha": alpha}


# ---------------------------------------------------------------- evaluation and data (run plumbing)
def demo_tensors(data: dict, discrete: bool, device: torch.device) -> dict:
    """Demo-format arrays as the tensors the updates and the reward scoring read."""
    t = {k: torch.as_tensor(np.asarray(data[k]), device=device) for k in envs.DEMO_KEYS}
    act = t["actions"] if discrete else t["actions"].float()
    return {"obs": t["obs"].float(), "act": act, "next_obs": t["next_obs"].float(),
            "done": t["terminated"].float(), "rew": t["rewards"].float()}  # fmt: skip


def sample(rows: dict, n: int) -> dict:
    idx = torch.randint(len(rows["obs"]), (n,), device=rows["obs"].device)
    return {k: rows[k][idx] for k in ("obs", "act", "next_obs", "done")}


def evaluate(m: Learner, args: Args, env_id: str, heldout: dict, final: bool) -> dict:
    """Return of the policy, and the recovered reward's correlation with the true one: per held-out expert
    transition, and (``final``) per episode of the policy."""
    policy = envs.numpy_policy(m.actor, m.log_alpha.device)
    metrics = envs.evaluate(policy, env_id, args.eval_episodes, args.seed)
    scores = {"reward/pearson_heldout": pearson(recovered_reward(m, heldout, args.gamma), heldout["rew"].cpu().numpy())
              if heldout else None}  # fmt: skip
    if final and args.reward_episodes:  # per episode: recovered vs true returns
        seed = envs.EVAL_SEED_BASE + 10_000 * args.seed + 5_000  # episodes apart from the evaluation's
        episodes = envs.rollout(policy, env_id, args.reward_episodes, seed, record=True)
        t = episodes["transitions"]
        reward = recovered_reward(m, demo_tensors(t, m.discrete, m.log_alpha.device), args.gamma)
        scores["reward/pearson_episodes"] = pearson(episode_sums(reward, t["terminated"] | t["truncated"]),
                                                    episodes["returns"])  # fmt: skip
    return metrics | {k: v for k, v in scores.items() if v is not None}  # undefined ones are not logged


def act(m: Learner, obs: np.ndarray, device: torch.device) -> np.ndarray:
    """An action of the current policy: pi = softmax(Q / alpha) (discrete) or the actor's sample."""
    with torch.no_grad():
        o = torch.as_tensor(obs, dtype=torch.float32, device=device)
        if m.discrete:
            return torch.distributions.Categorical(logits=m.actor(o) / m.log_alpha.exp()).sample().cpu().numpy()
        return m.actor.sample(o)[0].cpu().numpy()


# ------------------------------------------------------------ main (the loop and its run plumbing)
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    if args.learn_temp and spec.discrete:
        raise envs.CleanILError("--learn-temp applies to continuous actions only")
    if args.reward_episodes == 1 or args.reward_episodes < 0:
        raise envs.CleanILError("--reward-episodes must be 0 (skip) or at least 2 (a correlation needs two)")
    if args.num_critics < 1:
        raise envs.CleanILError("--num-critics must be at least 1")
    runs.check_budget(args, off_policy=not args.offline)
    runs.set_seed(args.seed)
    demos, held = envs.load_demos_with_heldout(env_id, args.num_demos, args.heldout_demos, args.demos)
    n_held = len(envs.episode_ends(held)) if held else 0
    args = replace(args, num_demos=len(envs.episode_ends(demos)), heldout_demos=n_held)  # recorded in config.json
    if not n_held:
        print("no held-out demos: the recovered reward is not scored on held-out expert transitions")
    expert = demo_tensors(demos, spec.discrete, device)
    heldout = demo_tensors(held, spec.discrete, device) if n_held else {}
    m = make_learner(spec, args, expert["obs"].mean(0), expert["obs"].std(0).clamp_min(1e-3), device)
    step_fn = nets.maybe_compile(lambda b: update(m, b, args), args.compile, args.total_steps, args.cudagraphs)

    run = runs.Run(args, "iqlearn_offline" if args.offline else "iqlearn", env_id, args.total_steps)
    bar, metrics, final = runs.progress(args.total_steps, "iqlearn", run.start), {}, {}
    # expert flags of a batch: all rows offline; the first half online (expert rows, then policy rows)
    n_expert = args.batch_size if args.offline else args.batch_size // 2
    is_expert = (torch.arange(n_expert if args.offline else 2 * n_expert, device=device) < n_expert).float()
    rb = None if args.offline else nets.make_replay_buffer(args.buffer_size, args.batch_size // 2, device)
    run.restore(m.state() | ({} if rb is None else {"replay": rb}))
    if not args.offline:
        env = envs.make_vec_env(env_id, 1)
        env.single_action_space.seed(args.seed + run.start)
        obs = env.reset(seed=args.seed + run.start)[0]  # a resumed run starts a new episode
    for step in range(run.start + 1, args.total_steps + 1):
        if not args.offline:  # one env step with the current policy (no reward stored)
            action = (
                np.array([env.single_action_space.sample()]) if step <= args.learning_starts else act(m, obs, device)
            )
            next_obs, _, term, _, info = env.step(action)
            rb.extend(nets.to_tensordict({"obs": obs.astype(np.float32), "act": action,
                                          "next_obs": envs.true_next_obs(next_obs, info).astype(np.float32),
                                          "done": term.astype(np.float32)}, device))  # fmt: skip
            obs = next_obs
        bar.update(1)
        if args.offline or step > args.learning_starts:
            if args.offline:
                b = sample(expert, args.batch_size) | {"is_expert": is_expert}
            else:  # half expert, half policy
                e, p = sample(expert, args.batch_size // 2), rb.sample()
                b = {k: torch.cat([e[k], p[k].to(e[k].dtype)]) for k in e} | {"is_expert": is_expert}
            metrics = step_fn(b)
        if step % args.log_every == 0 and metrics:
            run.log(step, metrics, env_steps=0 if args.offline else step)
        if step % args.eval_every == 0 or step == args.total_steps:
            final = evaluate(m, args, env_id, heldout, step == args.total_steps)
            run.log(step, final, env_steps=0 if args.offline else step)
        run.tick(step)
    bar.close()
    if args.save_model:
        envs.save_policy(run.dir / "model.pt", m.actor, spec, args.hidden, algo="iqlearn")
        blob = {"critics": m.critics.state_dict(), "actor": m.actor.state_dict(), "gamma": args.gamma,
                "alpha": float(m.log_alpha.detach().exp()), "hidden": list(args.hidden), "env_id": env_id}  # fmt: skip
        envs.atomic_torch_save(blob, run.dir / "reward.pt")
    run.record_video(envs.numpy_policy(m.actor, device))
    run.close()
    return final


if __name__ == "__main__":
    runs.run_cli(main, Args, "iqlearn")
