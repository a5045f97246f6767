"""SQIL: soft Q imitation learning, imitation by RL on a constant reward, discrete or continuous actions.

Reddy, Dragan & Levine (2020), "SQIL: Imitation Learning via Reinforcement Learning with Sparse Rewards",
ICLR, https://arxiv.org/abs/1905.11108.

No reward is learned. Every expert transition gets reward 1, every transition of the agent reward 0, and
a soft Q-function is fitted to both with the squared soft Bellman error over balanced minibatches, half
expert rows and half rows of the agent's replay (the paper's lambda_samp = 1):

    delta^2(D, r) = E_{(s, a, s') in D}[ (Q(s, a) - (r + gamma V(s')))^2 ]
    loss(Q)       = delta^2(D_demo, 1) + delta^2(D_samp, 0)

- Discrete actions: soft Q-learning, V(s) = alpha log sum_a exp(Q(s, a) / alpha) and
  pi(a|s) = softmax(Q(s, .) / alpha) at a fixed temperature alpha (--alpha); the Q-network is the policy
  (greedy: argmax_a Q(s, a)).
- Continuous actions: SAC on the same rewards: twin Q networks with V(s') = min_j Q'_j(s', a') -
  alpha log pi(a'|s'), a' ~ pi, a tanh-Gaussian actor trained on min E[alpha log pi(a|s) - min_j Q_j(s, a)]
  and a learned temperature (target entropy -dim(A)) starting at --alpha.
- V(s') comes from Polyak-averaged target networks (--tau); the env's reward is never stored or seen.

Absorbing states (on by default; --no-absorbing masks terminal values instead). With rewards of 0 and 1
only, how an episode's end is valued decides whether the agent wants to end it. Masking V(s') at a
termination values every end at 0, below any state whose value is positive: a bonus for surviving, true
for Hopper's expert but wrong for an expert whose episodes end on purpose (MountainCar reaches its goal),
and right for Hopper only by accident. So a terminating transition (s, a, s') is stored as (s, a, s_abs)
followed by (s_abs, s_abs), as in DAC (Kostrikov et al. 2019), in expert data and the agent's alike, and
the absorbing state gets the same constant rewards as any state: 1 on the expert's rows, 0 on the agent's.
Its value is then learned from the data: near 0 when only the agent ends episodes (ending is as bad as
leaving the expert's states for good), high when the expert ends them too. s_abs has a single action, so
its Q-value is one learned number per critic (Critic.q_abs), with no entropy term; the Q-network itself
sees real states only, which keeps the saved policy a plain one. Time-limit ends are not terminations.

Run: python cleanil/sqil.py --env CartPole  (settings from configs/sqil/CartPole-v1.yaml)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/sqil/<EnvId>.yaml overrides them for that env (its file is printed at start),
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
    """environment steps"""
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
    """compile the update step with torch.compile (eager if that fails); None: if >= 20k updates, where it pays"""
    cudagraphs: bool = False
    """with a compiled update on a GPU, replay it as a CUDA graph (torch.compile mode reduce-overhead)"""
    save_model: bool = True
    """save the policy to runs/<run>/model.pt"""
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
    """log losses every this many env steps"""
    # ---- the algorithm: SQIL
    absorbing: bool = True
    """absorbing states for terminating episodes (see the docstring); --no-absorbing masks terminal values"""
    alpha: float = 0.1
    """entropy temperature: the fixed alpha of pi = softmax(Q / alpha) (discrete), or the starting value of
    SAC's learned temperature (continuous)"""
    lr: float = 3e-4
    """learning rate of every network (and of the temperature)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of every network"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 256
    """minibatch size: half expert rows, half the agent's"""
    tau: float = 0.005
    """Polyak rate of the target networks"""
    buffer_size: int = 1_000_000
    """replay capacity of the agent's transitions"""
    learning_starts: int = 5_000
    """env steps of random actions before updates start"""


# ----------------------------------------------------------------------- absorbing states (the algorithm)
def with_absorbing(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
                   absorbing: bool) -> dict[str, np.ndarray]:  # fmt: skip
    """Rows (s, a, s', mask) with flags marking s_abs. With ``absorbing``, a terminated (s, a, s') becomes
    (s, a, s_abs) and is followed by (s_abs, 0, s_abs), with s_abs's observation zeroed, and every row
    bootstraps (mask 1); without, terminated rows are masked (mask 0). ``act`` is (n, k): action vectors
    or action indices as one column."""
    o, a, o2 = obs.astype(np.float32), act.astype(np.float32), next_obs.astype(np.float32).copy()
    term = terminated.astype(bool)
    flag, next_flag = np.zeros(len(o), np.float32), np.zeros(len(o), np.float32)
    mask = np.ones(len(o), np.float32) if absorbing else (~term).astype(np.float32)
    if absorbing and term.any():
        n = int(term.sum())
        o2[term], next_flag[term] = 0.0, 1.0
        o, o2 = np.concatenate([o, np.zeros((n, o.shape[1]), np.float32)]), np.concatenate([o2, o2[term]])
        a = np.concatenate([a, np.zeros((n, a.shape[1]), np.float32)])
        flag, next_flag = (
            np.concatenate([flag, np.ones(n, np.float32)]),
            np.concatenate([next_flag, np.ones(n, np.float32)]),
        )
        mask = np.ones(len(o), np.float32)
    return {"obs": o, "act": a, "next_obs": o2, "flag": flag, "next_flag": next_flag, "mask": mask}


def sqil_rewards(n_expert: int, n_agent: int, device: torch.device) -> torch.Tensor:
    """r = 1 on the expert's rows (first), 0 on the agent's: the whole of SQIL's reward."""
    return (torch.arange(n_expert + n_agent, device=device) < n_expert).float()


# -------------------------------------------------------------------------- losses (the algorithm)
def soft_bellman_loss(q: torch.Tensor, reward: torch.Tensor, next_v: torch.Tensor, mask: torch.Tensor,
                      gamma: float) -> torch.Tensor:  # fmt: skip
    """delta^2 = E[(Q(s, a) - (r + gamma mask V(s')))^2] per critic, summed over critics (q: [k, batch]).
    Over a balanced batch this is (delta^2(D_demo, 1) + delta^2(D_samp, 0)) / 2."""
    y = reward + gamma * mask * next_v
    return (q - y.detach()).pow(2).mean(-1).sum()


def soft_value_discrete(q: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """V(s) = alpha log sum_a exp(Q(s, a) / alpha), the soft maximum over actions."""
    return alpha * torch.logsumexp(q / alpha, dim=-1)


# ------------------------------------------------------------------------ networks (the algorithm)
class Critic(nn.Module):
    """Q(s, a) on real states, and Q(s_abs), one number per critic for the absorbing state's single action.
    Discrete: ``net`` is a CategoricalActor whose logits are Q(s, .) (also the policy); continuous: twin Q."""

    def __init__(self, net: nn.Module, k: int):
        super().__init__()
        self.net, self.q_abs = net, nn.Parameter(torch.zeros(k, 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
        """Q(s, a) of each critic, shaped [k, batch]; Q(s_abs) on rows flagged absorbing."""
        if isinstance(self.net, nets.CategoricalActor):
            q = self.net(obs).gather(-1, act.long())[:, 0].unsqueeze(0)
        else:
            q = self.net(obs, act)
        return torch.where(flag.bool(), self.q_abs, q)


@dataclass
class Learner:
    """Everything SQIL trains: the critic and its target copy, the actor (the critic's Q-network when
    actions are discrete), the temperature and the optimizers."""

    discrete: bool
    critic: Critic
    target: Critic
    actor: nn.Module
    log_alpha: torch.Tensor
    critic_opt: nets.Adam
    actor_opt: nets.Adam | None
    alpha_opt: nets.Adam | None

    def state(self) -> dict:
        """What a checkpoint saves, by name."""
        names = ("critic", "target", "log_alpha", "critic_opt") + (
            () if self.discrete else ("actor", "actor_opt", "alpha_opt")
        )
        return {k: getattr(self, k) for k in names}


def make_learner(spec: envs.EnvSpec, args: Args, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                 device: torch.device) -> Learner:  # fmt: skip
    actor = envs.make_actor(spec, args.hidden).to(device)
    actor.norm.mean.copy_(obs_mean)  # standardize with the expert's statistics
    actor.norm.std.copy_(obs_std)
    if spec.discrete:
        critic = Critic(actor, 1)
    else:
        critic = Critic(nets.TwinQNetwork(spec.obs_dim, spec.act_dim, args.hidden), 2)
    critic = critic.to(device)
    log_alpha = torch.tensor([np.log(args.alpha)], dtype=torch.float32, device=device, requires_grad=True)
    return Learner(spec.discrete, critic, copy.deepcopy(critic).requires_grad_(False), actor, log_alpha,
                   nets.Adam(critic.parameters(), args.lr),
                   None if spec.discrete else nets.Adam(actor.parameters(), args.lr),
                   None if spec.discrete else nets.Adam([log_alpha], args.lr))  # fmt: skip


def next_value(m: Learner, b: dict, alpha: torch.Tensor) -> torch.Tensor:
    """V(s') from the target networks: the soft maximum (discrete) or min_j Q'_j(s', a') - alpha log pi(a'|s')
    with a' ~ pi (continuous); on absorbing s', Q'(s_abs) with no entropy term (a single action)."""
    with torch.no_grad():
        if m.discrete:
            v = soft_value_discrete(m.target.net(b["next_obs"]), alpha)
        else:
            a2, logp2 = m.actor.sample(b["next_obs"])
            v = m.target.net(b["next_obs"], a2).min(0).values - alpha * logp2
        return torch.where(b["next_flag"].bool(), m.target.q_abs.min(0).values, v)


# -------------------------------------------------------------------------- update (the algorithm)
def update(m: Learner, b: dict, args: Args) -> dict:
    """One soft Bellman step for the critic on SQIL's rewards, then (continuous) SAC's actor and temperature."""
    alpha = m.log_alpha.exp().detach()
    q = m.critic(b["obs"], b["act"], b["flag"])
    critic_loss = soft_bellman_loss(q, b["reward"], next_value(m, b, alpha), b["mask"], args.gamma)
    m.critic_opt.descend(critic_loss)
    w = torch.stack([b["reward"], 1 - b["reward"]])  # rows of the expert, rows of the agent
    q_mean = (q[0].detach() * w).sum(-1) / w.sum(-1)
    metrics = {"losses/critic": critic_loss.detach(), "alpha": alpha, "q_expert": q_mean[0], "q_agent": q_mean[1]}
    if not m.discrete:  # actor: min E[alpha log pi(a|s) - min_j Q_j(s, a)] over real states
        live = 1 - b["flag"]
        a, logp = m.actor.sample(b["obs"])
        actor_loss = ((alpha * logp - m.critic.net(b["obs"], a).min(0).values) * live).sum() / live.sum()
        m.actor_opt.descend(actor_loss)
        # temperature: min E[-alpha (log pi(a|s) + H_target)], H_target = -dim(A)
        m.alpha_opt.descend(-(m.log_alpha * (logp.detach() - a.shape[-1]) * live).sum() / live.sum())
        metrics["losses/actor"] = actor_loss.detach()
    with torch.no_grad():  # Polyak: theta' <- (1 - tau) theta' + tau theta
        torch._foreach_lerp_(list(m.target.parameters()), list(m.critic.parameters()), args.tau)
    return metrics


# ------------------------------------------------------------------ acting and data (run plumbing)
def act(m: Learner, obs: np.ndarray, device: torch.device) -> np.ndarray:
    """An action of the current policy: a ~ softmax(Q / alpha) (discrete) or the actor's sample."""
    with torch.no_grad():
        o = torch.as_tensor(obs, dtype=torch.float32, device=device)
        if m.discrete:  # Gumbel-max: argmax_a Q(s, a) / alpha + g_a, g_a ~ Gumbel(0, 1) (NaN Q: no exception,
            logits = m.actor(o) / m.log_alpha.exp()  # so that the run's non-finite guard reports it)
            return (logits - torch.log(-torch.log(torch.rand_like(logits)))).argmax(-1).cpu().numpy()
        return m.actor.sample(o)[0].cpu().numpy()


def action_rows(action: np.ndarray, discrete: bool) -> np.ndarray:
    """Actions as the (n, k) rows the replay stores: one column of indices (discrete) or the vectors."""
    return action.reshape(len(action), 1) if discrete else action


def sample_rows(data: dict, n: int) -> dict:
    """n rows drawn uniformly with replacement, the same rows of every array: whole transitions."""
    idx = torch.randint(len(data["obs"]), (n,), device=data["obs"].device)
    return {k: v[idx] for k, v in data.items()}


# ------------------------------------------------------------ main (the loop and its run plumbing)
def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    if args.batch_size < 2 or args.alpha <= 0:
        raise envs.CleanILError("--batch-size must be at least 2 (half expert, half agent) and --alpha positive")
    runs.check_budget(args, off_policy=True)
    runs.set_seed(args.seed)
    demos = envs.load_demos(env_id, args.num_demos, args.demos)
    args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json
    rows = with_absorbing(demos["obs"], action_rows(demos["actions"], spec.discrete), demos["next_obs"],
                          demos["terminated"], args.absorbing)  # fmt: skip
    expert = {k: torch.as_tensor(v, device=device) for k, v in rows.items()}
    obs = torch.as_tensor(demos["obs"], device=device)
    m = make_learner(spec, args, obs.mean(0), obs.std(0).clamp_min(1e-3), device)
    step_fn = nets.maybe_compile(lambda b: update(m, b, args), args.compile, args.total_steps, args.cudagraphs)

    run = runs.Run(args, "sqil", env_id, args.total_steps)
    n_expert = args.batch_size // 2
    reward = sqil_rewards(n_expert, args.batch_size - n_expert, device)
    rb = nets.make_replay_buffer(args.buffer_size, args.batch_size - n_expert, device)
    run.restore(m.state() | {"replay": rb})
    env = envs.make_vec_env(env_id, 1)
    env.single_action_space.seed(args.seed + run.start)
    obs = env.reset(seed=args.seed + run.start)[0]  # a resumed run starts a new episode
    bar, metrics, final = runs.progress(args.total_steps, "sqil", run.start), {}, {}
    for step in range(run.start + 1, args.total_steps + 1):
        if step <= args.learning_starts:
            action = np.array([env.single_action_space.sample()])
        else:
            action = act(m, obs, device)
        next_obs, _, term, _, info = env.step(action)  # the true reward is not kept
        rb.extend(nets.to_tensordict(with_absorbing(obs, action_rows(action, spec.discrete),
                                                     envs.true_next_obs(next_obs, info), term, args.absorbing),
                                     device))  # fmt: skip
        obs = next_obs
        bar.update(1)
        if step > args.learning_starts:  # balanced: half expert rows (reward 1), half the agent's (reward 0)
            e, p = sample_rows(expert, n_expert), rb.sample()
            metrics = step_fn({k: torch.cat([e[k], p[k]]) for k in e} | {"reward": reward})
        if step % args.log_every == 0 and metrics:
            run.log(step, metrics, env_steps=step)
        if step % args.eval_every == 0 or step == args.total_steps:
            final = envs.evaluate(envs.numpy_policy(m.actor, device), env_id, args.eval_episodes, args.seed)
            run.log(step, final, env_steps=step)
        run.tick(step)
    bar.close()
    if args.save_model:
        envs.save_policy(run.dir / "model.pt", m.actor, spec, args.hidden, algo="sqil")
    run.record_video(envs.numpy_policy(m.actor, device))
    run.close()
    return final


if __name__ == "__main__":
    runs.run_cli(main, Args, "sqil")
