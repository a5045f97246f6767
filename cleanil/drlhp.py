"""Deep RL from human preferences: learn a reward from comparisons of trajectory fragments.

Christiano, Leike, Brown, Martic, Legg & Amodei (2017), "Deep Reinforcement Learning from Human
Preferences", NeurIPS, https://arxiv.org/abs/1706.03741.

The loop alternates:
    1. RL on the learned reward r_hat (ensemble mean, normalized to zero mean and unit std): SAC for
       continuous actions, PPO for discrete ones. The env's reward is never given to the agent.
    2. Cut the agent's recent trajectories into fragments sigma of --fragment-length steps.
    3. Ask the gatherer which of two fragments is better: mu = 1 (first), 0 (second), 0.5 (equal).
    4. Train an ensemble of reward nets, each on a bootstrap resample of the labels, with the
       Bradley-Terry model:
           P(sigma1 > sigma2) = exp(sum_t r(s1_t, a1_t)) / (exp(sum_t r(s1_t, a1_t)) + exp(sum_t r(s2_t, a2_t)))
           loss = -mu log P(sigma1 > sigma2) - (1 - mu) log P(sigma2 > sigma1)

- Query schedule: --initial-fraction of the --num-queries labels is asked on random-policy
  fragments before RL starts; the rest at a decaying rate, N(t) proportional to log(1 + t / tau),
  i.e. a labelling rate proportional to 1 / (tau + t).
- Active selection (--active): of --oversample x as many random candidate pairs as are needed, ask
  about those whose predicted preference varies most across the ensemble.
- The gatherer is any callable taking a list of fragment pairs and returning one mu per pair (NaN: cannot
  tell, the pair is not trained on); a fragment is a dict with ``id``, ``obs`` [L, obs_dim], ``actions``
  [L, ...], ``alive`` [L] (False on the padding after an episode ended) and ``true_rewards`` [L]. The shipped
  ones are the synthetic oracle (Bradley-Terry on the fragments' true returns with a temperature, optional
  label noise) and ``--gatherer web``: a person answers on a local page (cleanil/labelling.py) that plays
  each pair as two looping clips. Only the gatherer and evaluation read the env's reward.
- For a person, each fragment also keeps the simulator state of each step (``states``: MuJoCo's qpos and
  qvel, or a classic-control env's state; 12 numbers a step for Hopper, ~2.4 KB a 25-step fragment), read
  before every env step (~2 us per env), and clips are drawn from them only for the pairs asked, in a
  thread while the person answers (MuJoCo offscreen, ~20-60 ms a 240-pixel frame on a CPU core: ~1-3 s a
  pair of 25-step fragments). The synthetic oracle's path neither reads nor draws states.
- A round asked of a person is checkpointed when it starts; every answer is appended to labels.jsonl at
  once. A run stopped while a person labels resumes (``--resume``) at that round, showing only the pairs
  not yet answered (that step's agent update is skipped). ``--labels-from runs/<run>/labels.jsonl`` trains
  the reward on the pairs a person answered in that run, before RL, and asks nothing more.
- Episodes that terminate: a fragment that reaches the end is padded with an absorbing state
  (zero true reward; the reward nets score it like any state), and the agent bootstraps through it
  as in DAC (Kostrikov et al. 2019), so ending an episode is judged by the learned reward.

Run: python cleanil/drlhp.py --env CartPole  (settings from configs/drlhp/CartPole-v1.yaml: PPO agent, 100k env
steps, 500 synthetic queries; normalized 0.997 +- 0.006 over 3 benchmark seeds)
"""

from __future__ import annotations

import copy
import importlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cleanil import envs, labelling, nets, runs


@dataclass
class Args:
    # Defaults below; configs/drlhp/<EnvId>.yaml overrides them for that env (its file is printed at start),
    # and flags on the command line override both.
    # ---- run plumbing, common to every cleanil algorithm (no demonstrations: DRLHP learns from preferences)
    env: str = "CartPole"
    """environment: an alias (CartPole, Acrobot, MountainCar, Pendulum, HalfCheetah, Hopper, Walker2d, Ant, Swimmer,
    Humanoid), a registered gymnasium id, or module:EnvName-v0 for an env that the module registers on import"""
    env_kwargs: str = "{}"
    """keyword arguments of the env (gymnasium.make) as a JSON object, e.g. '{"ctrl_cost_weight": 0.2}'"""
    capture_video: bool = False
    """record one deterministic evaluation episode of the final policy to runs/<run>/videos/final.mp4"""
    seed: int = 0
    """random seed for torch, numpy, the environment, the oracle and the evaluation episodes"""
    device: str = "auto"
    """torch device: auto (cuda if available, else cpu), cpu or cuda"""
    total_steps: int = 300_000
    """environment steps of interaction"""
    eval_every: int = 10_000
    """evaluate the policy on the true reward every this many env steps (and at the end)"""
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
    """save the policy to runs/<run>/model.pt and the reward ensemble to runs/<run>/reward.pt"""
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
    # ---- the algorithm: preferences
    num_queries: int = 1_400
    """total number of preference labels asked over the run"""
    initial_fraction: float = 0.25
    """share of the labels asked on random-policy fragments before RL starts"""
    query_decay: float = 0.25
    """tau of the labelling rate 1 / (tau + t), as a fraction of --total-steps"""
    query_every: int = 1_000
    """env steps between query rounds (PPO: checked after each rollout)"""
    fragment_length: int = 25
    """steps per fragment"""
    pool_size: int = 1_000
    """most recent fragments kept as candidates for queries"""
    active: bool = True
    """ask about the candidate pairs the ensemble disagrees on most (else uniformly random pairs)"""
    oversample: int = 10
    """active selection scores this many candidate pairs per query"""
    gatherer: str = "synthetic"
    """who answers: synthetic (the oracle below), web (a person, on a local page whose URL is printed), or
    module:function (a callable on a list of fragment pairs)"""
    host: str = "127.0.0.1"
    """web: the address the labelling page listens on (127.0.0.1: this machine only)"""
    port: int = 0
    """web: the labelling page's port (0: any free port)"""
    labels_from: str | None = None
    """train the reward on the answered pairs of an earlier run's labels.jsonl (and its queries/) before RL,
    and ask no more queries"""
    oracle_temperature: float = 0.0
    """synthetic oracle: P(first) = sigmoid((R1 - R2) / temperature); 0 answers deterministically"""
    oracle_noise: float = 0.0
    """synthetic oracle: probability of answering uniformly at random"""
    ensemble: int = 3
    """reward nets in the ensemble"""
    reward_hidden: tuple[int, ...] = (64, 64)
    """hidden layer sizes of each reward net"""
    reward_lr: float = 3e-4
    """learning rate of the reward nets"""
    reward_updates: int = 200
    """gradient steps on the labels after each query round (5x after the first)"""
    reward_batch: int = 64
    """labelled pairs per reward gradient step"""
    # ---- the algorithm: agent
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the actor and critic(s)"""
    lr: float = 3e-4
    """learning rate of the agent"""
    gamma: float = 0.99
    """discount factor"""
    batch_size: int = 256
    """SAC minibatch, or PPO minibatch"""
    buffer_size: int = 1_000_000
    """SAC replay capacity"""
    learning_starts: int = 10_000
    """SAC: env steps of random actions before updates start"""
    tau: float = 0.005
    """SAC: Polyak rate of the target critics"""
    num_envs: int = 8
    """PPO: parallel envs"""
    num_steps: int = 128
    """PPO: steps per env per rollout"""
    update_epochs: int = 10
    """PPO: optimization epochs per rollout"""
    gae_lambda: float = 0.95
    """PPO: GAE lambda"""
    clip_coef: float = 0.2
    """PPO: policy ratio clip"""
    vf_coef: float = 0.5
    """PPO: value loss weight"""
    max_grad_norm: float = 0.5
    """PPO: gradient clipping"""
    log_every: int = 1_000
    """SAC: log losses every this many env steps"""


# --------------------------------------------------------------------- preferences (the algorithm)
def bradley_terry_loss(returns1: torch.Tensor, returns2: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """-mu log P(1 > 2) - (1 - mu) log P(2 > 1), P(1 > 2) = sigmoid(R1 - R2) with R = sum_t r_hat."""
    return F.binary_cross_entropy_with_logits(returns1 - returns2, mu)


class SyntheticOracle:
    """Answers like a Bradley-Terry labeller on the fragments' true returns: P(first) =
    sigmoid((R1 - R2) / temperature) (a hard comparison at temperature 0, 0.5 on ties), and with
    probability ``noise`` a uniformly random answer."""

    def __init__(self, temperature: float, noise: float, seed: int):
        self.temperature, self.noise, self.rng = temperature, noise, np.random.default_rng(seed)

    def __call__(self, pairs: list[tuple[dict, dict]]) -> np.ndarray:
        diff = np.array([a["true_rewards"].sum() - b["true_rewards"].sum() for a, b in pairs])
        if self.temperature > 0:
            p_first = 0.5 * (1 + np.tanh(diff / (2 * self.temperature)))  # sigmoid(diff / temperature)
            mu = (self.rng.random(len(pairs)) < p_first).astype(float)
        else:
            mu = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        noisy = self.rng.random(len(pairs)) < self.noise
        return np.where(noisy, self.rng.integers(0, 2, len(pairs)).astype(float), mu)


def load_gatherer(spec_str: str, args: Args) -> Callable | None:
    """The synthetic oracle, a module:function, or None for web (its server starts once the run has a folder)."""
    if spec_str == "synthetic":
        return SyntheticOracle(args.oracle_temperature, args.oracle_noise, args.seed)
    if spec_str == "web":
        return None
    module_name, sep, fn_name = spec_str.partition(":")
    if not sep or not module_name or not fn_name:
        raise envs.CleanILError(f"--gatherer {spec_str!r}: expected synthetic or module:function")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise envs.CleanILError(f"--gatherer {spec_str!r}: cannot load it ({e})") from None


class FragmentCutter:
    """Cuts each env's stream of steps into fragments of ``length`` steps inside one episode. A
    fragment that reaches a termination is padded with the absorbing state; a time-limit end drops
    the unfinished fragment."""

    def __init__(self, num_envs: int, length: int, obs_dim: int, act_dim: int):
        self.length, self.obs_dim, self.act_dim = length, obs_dim, act_dim
        self.current: list[list] = [[] for _ in range(num_envs)]

    def add(self, i: int, obs: np.ndarray, act: np.ndarray, true_rew: float, term: bool, trunc: bool,
            state: np.ndarray | None = None) -> list[dict]:  # fmt: skip
        """``state``: the simulator state at ``obs``, kept (as ``states``) when a person will watch the fragment."""
        cur = self.current[i]
        cur.append((np.append(obs, 0.0), act, true_rew, True, state))
        if term:
            while len(cur) < self.length:  # the absorbing state: zeros and a flag, a single (zero) action
                cur.append((np.eye(1, self.obs_dim + 1, self.obs_dim)[0], np.zeros(self.act_dim), 0.0, False, state))
        out = []
        if len(cur) == self.length:
            o, a, r, alive, states = zip(*cur, strict=True)
            fragment = {"obs": np.array(o, np.float32), "actions": np.array(a, np.float32), "true_rewards": np.array(r),
                        "alive": np.array(alive)}  # fmt: skip
            out.append(fragment if state is None else fragment | {"states": np.array(states)})
        if term or trunc or out:
            self.current[i] = []
        return out


class RewardEnsemble(nn.Module):
    """K reward nets r_k(s, a) on [s, flag, a] (action zeroed in the absorbing state), inputs
    standardized with fixed statistics; ``forward`` gives the normalized ensemble mean."""

    def __init__(self, in_dim: int, k: int, hidden: tuple[int, ...]):
        super().__init__()
        self.norm = nets.Normalizer(in_dim)
        self.nets = nn.ModuleList([nets.mlp(in_dim, 1, hidden) for _ in range(k)])
        self.register_buffer("out_mean", torch.zeros(()))
        self.register_buffer("out_std", torch.ones(()))

    def members(self, obs: torch.Tensor, act: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """[K, ...] raw rewards of every member, or [...] of member k alone."""
        x = self.norm(torch.cat([obs, act * (1 - obs[..., -1:])], -1))
        if k is not None:
            return self.nets[k](x).squeeze(-1)
        return torch.stack([net(x).squeeze(-1) for net in self.nets])

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return (self.members(obs, act).mean(0) - self.out_mean) / self.out_std


def stack(fragments: list[dict], key: str, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.stack([f[key] for f in fragments]), dtype=torch.float32, device=device)


# -------------------------------------------------------------------------- agents (the algorithm)
def with_absorbing(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray) -> dict:
    """Transitions over flag-augmented states, s -> [s, 0]; a terminated (s, a, s') becomes
    (s, a, s_abs) followed by (s_abs, 0, s_abs), s_abs = [0, ..., 0, 1]: nothing is masked."""
    flag = np.zeros((len(obs), 1), np.float32)
    o, o2 = np.concatenate([obs, flag], 1).astype(np.float32), np.concatenate([next_obs, flag], 1).astype(np.float32)
    a, term = act.astype(np.float32), terminated.astype(bool)
    if term.any():
        s_abs = np.zeros((int(term.sum()), o.shape[1]), np.float32)
        s_abs[:, -1] = 1
        o2[term] = s_abs[0]
        o, o2 = np.concatenate([o, s_abs]), np.concatenate([o2, s_abs])
        a = np.concatenate([a, np.zeros((len(s_abs), a.shape[1]), np.float32)])
    return {"obs": o, "act": a, "next_obs": o2}


def sac_critic_target(next_obs: torch.Tensor, reward: torch.Tensor, actor: nn.Module, targets: nn.Module,
                      alpha: torch.Tensor, gamma: float) -> torch.Tensor:  # fmt: skip
    """y = r + gamma * (min_j Q'_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s');
    in the absorbing state a' = 0 with no entropy term (a single action)."""
    with torch.no_grad():
        live = 1 - next_obs[:, -1:]
        a2, logp2 = actor.sample(next_obs[:, :-1])
        a2, logp2 = a2 * live, logp2 * live.squeeze(-1)
        q_next = targets(next_obs, a2).min(0).values - alpha * logp2
        return reward + gamma * q_next


def train_sac(args: Args, spec: envs.EnvSpec, device: torch.device, reward: RewardEnsemble, act_vec: Callable,
              add_fragments: Callable, query_round: Callable, queries_due: Callable, run: runs.Run,
              restore: Callable) -> tuple[nn.Module, dict]:  # fmt: skip
    """SAC on r_hat: one env step, one update; the initial queries when learning starts, then every
    --query-every steps."""
    actor = nets.TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, args.hidden)
    actor = actor.to(device)
    critics = nets.TwinQNetwork(spec.obs_dim + 1, spec.act_dim, args.hidden).to(device)
    targets = copy.deepcopy(critics).requires_grad_(False)
    log_alpha = torch.zeros(1, device=device, requires_grad=True)
    actor_opt, critic_opt = nets.Adam(actor.parameters(), args.lr), nets.Adam(critics.parameters(), args.lr)
    alpha_opt = nets.Adam([log_alpha], args.lr)

    def update(b: dict) -> dict:
        alpha = log_alpha.exp().detach()
        with torch.no_grad():  # the learned reward, recomputed for every replayed transition
            r = reward(b["obs"], b["act"])
        y = sac_critic_target(b["next_obs"], r, actor, targets, alpha, args.gamma)
        critic_loss = (critics(b["obs"], b["act"]) - y).pow(2).mean(-1).sum()  # sum of the twins' MSEs
        critic_opt.descend(critic_loss)
        # actor: min E[alpha log pi(a|s) - min_j Q_j(s, a)] over real states (the absorbing one has no choice)
        live = 1 - b["obs"][:, -1]
        a, logp = actor.sample(b["obs"][:, :-1])
        q = critics(b["obs"], a).min(0).values
        actor_loss = ((alpha * logp - q) * live).sum() / live.sum().clamp_min(1)
        actor_opt.descend(actor_loss)
        # temperature: min E[-alpha (log pi + H_target)], H_target = -dim(A)
        alpha_opt.descend(-(log_alpha * (logp.detach() - spec.act_dim) * live).sum() / live.sum().clamp_min(1))
        with torch.no_grad():  # Polyak: theta' <- (1 - tau) theta' + tau theta
            torch._foreach_lerp_(list(targets.parameters()), list(critics.parameters()), args.tau)
        return {"losses/critic": critic_loss.detach(), "alpha": alpha, "reward_mean": r.mean()}

    update = nets.maybe_compile(update, args.compile, args.total_steps, args.cudagraphs)
    rb = nets.make_replay_buffer(args.buffer_size, args.batch_size, device)
    asked = restore({
        "actor": actor, "critics": critics, "targets": targets, "log_alpha": log_alpha, "actor_opt": actor_opt,
        "critic_opt": critic_opt, "alpha_opt": alpha_opt, "replay": rb})  # fmt: skip
    env = envs.make_vec_env(spec.env_id, 1)
    env.single_action_space.seed(args.seed + run.start)
    cutter = FragmentCutter(1, args.fragment_length, spec.obs_dim, spec.act_dim)
    obs = env.reset(seed=args.seed + run.start)[0]  # a resumed run starts a new episode
    bar, metrics, horizon = runs.progress(args.total_steps, "drlhp-sac", run.start), {}, args.total_steps
    for step in range(run.start + 1, args.total_steps + 1):
        if step <= args.learning_starts:
            action = np.array([env.single_action_space.sample()])
        else:
            with torch.no_grad():
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()
        state = envs.sim_state(env.envs[0]) if args.gatherer == "web" else None  # for a person's clips
        next_obs, true_rew, term, trunc, info = env.step(action)  # true_rew goes to the fragments only
        add_fragments(cutter.add(0, obs[0], act_vec(action)[0], float(true_rew[0]), bool(term[0]), bool(trunc[0]),
                                 state))  # fmt: skip
        rb.extend(nets.to_tensordict(with_absorbing(obs, action, envs.true_next_obs(next_obs, info), term), device))
        obs = next_obs
        bar.update(1)
        t = step - args.learning_starts
        if t == 0 or (t > 0 and t % args.query_every == 0):
            q = query_round(queries_due(t, horizon - args.learning_starts) - asked, asked == 0, step)
            asked, metrics = q.get("queries", asked), metrics | q
        if t > 0 and asked > 0:
            b = rb.sample()
            metrics |= update({k: b[k] for k in ("obs", "act", "next_obs")})
        if step % args.log_every == 0 and metrics:
            run.log(step, metrics, env_steps=step)
        if step % args.eval_every == 0 or step == args.total_steps:
            final = envs.evaluate(envs.numpy_policy(actor, device), spec.env_id, args.eval_episodes, args.seed)
            run.log(step, final, env_steps=step)
        run.tick(step)
    bar.close()
    return actor, final


def train_ppo(args: Args, spec: envs.EnvSpec, device: torch.device, reward: RewardEnsemble, act_vec: Callable,
              add_fragments: Callable, query_round: Callable, queries_due: Callable, run: runs.Run,
              restore: Callable) -> tuple[nn.Module, dict]:  # fmt: skip
    """PPO on r_hat (discrete actions): the initial queries after the first rollout, before any
    update; then a query round after the rollouts that cross a multiple of --query-every."""
    actor = nets.CategoricalActor(spec.obs_dim, spec.act_dim, args.hidden).to(device)
    critic = nets.mlp(spec.obs_dim, 1, args.hidden).to(device)
    params = list(actor.parameters()) + list(critic.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, eps=1e-5)
    asked = restore({"actor": actor, "critic": critic, "optimizer": optimizer})
    vec_env = envs.make_vec_env(spec.env_id, args.num_envs)
    cutter = FragmentCutter(args.num_envs, args.fragment_length, spec.obs_dim, spec.act_dim)
    obs = vec_env.reset(seed=args.seed + run.start)[0]
    n, T = args.num_envs, args.num_steps
    s_abs, a_abs = torch.zeros(1, spec.obs_dim + 1, device=device), torch.zeros(1, spec.act_dim, device=device)
    s_abs[0, -1] = 1  # the absorbing state: zeros and a flag, a single (zero) action

    def update(o: torch.Tensor, a: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, ret: torch.Tensor) -> dict:
        ratio = (torch.distributions.Categorical(logits=actor(o)).log_prob(a) - logp_old).exp()
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        # L_clip = -E[min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)],  L_V = 0.5 E[(V(s) - R)^2]
        pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef) * adv).mean()
        v_loss = 0.5 * (critic(o).squeeze(-1) - ret).pow(2).mean()
        optimizer.zero_grad()
        (pg_loss + args.vf_coef * v_loss).backward()
        nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        return {"losses/policy": pg_loss.detach(), "losses/value": v_loss.detach()}

    step, next_eval = run.start, (run.start // args.eval_every + 1) * args.eval_every
    bar = runs.progress(args.total_steps, "drlhp-ppo", step)
    while step < args.total_steps:
        optimizer.param_groups[0]["lr"] = args.lr * (1 - step / args.total_steps)
        rows: dict[str, list] = {k: [] for k in ("obs", "act", "logp", "next_obs", "term", "trunc")}
        for _ in range(T):
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=actor(o))
                a = dist.sample()
            a_np = a.cpu().numpy()
            one_hot = act_vec(a_np)
            states = [envs.sim_state(e) for e in vec_env.envs] if args.gatherer == "web" else [None] * n
            next_obs, true_rew, term, trunc, info = vec_env.step(a_np)  # true_rew goes to the fragments only
            for i in range(n):
                add_fragments(cutter.add(i, obs[i], one_hot[i], float(true_rew[i]), term[i], trunc[i], states[i]))
            for k, v in zip(rows, (obs, a_np, dist.log_prob(a).cpu().numpy(),
                                   envs.true_next_obs(next_obs, info), term, trunc & ~term), strict=True):  # fmt: skip
                rows[k].append(v)
            obs = next_obs
        step += n * T
        bar.update(n * T)
        q = {}
        if asked == 0 or step // args.query_every > (step - n * T) // args.query_every or step >= args.total_steps:
            q = query_round(queries_due(step if asked else 0, args.total_steps) - asked, asked == 0, step)
            asked = q.get("queries", asked)
        tensors = {k: torch.as_tensor(np.stack(v), device=device) for k, v in rows.items()}  # [T, n, ...]
        o, o2, act = tensors["obs"].float(), tensors["next_obs"].float(), tensors["act"]
        term, trunc = tensors["term"].float(), tensors["trunc"].float()
        with torch.no_grad():
            flag = torch.zeros(T, n, 1, device=device)
            r = reward(torch.cat([o, flag], -1), F.one_hot(act, spec.act_dim).float())
            r_abs = reward(s_abs, a_abs)
            value, next_value = critic(o).squeeze(-1), critic(o2).squeeze(-1)
        # after a termination the next state is s_abs, whose value is r_abs / (1 - gamma)
        next_value = (1 - term) * next_value + term * r_abs / (1 - args.gamma)
        # GAE: delta_t = r_t + gamma V(s'_t) - V(s_t);  A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}
        done, adv, last = torch.maximum(term, trunc), torch.zeros(T, n, device=device), torch.zeros(n, device=device)
        delta = r + args.gamma * next_value - value
        for t in reversed(range(T)):
            last = delta[t] + args.gamma * args.gae_lambda * (1 - done[t]) * last
            adv[t] = last
        flat = [x.flatten(0, 1) for x in (o, act, tensors["logp"], adv, adv + value)]
        for _ in range(args.update_epochs):
            for idx in torch.randperm(T * n, device=device).split(args.batch_size):
                metrics = update(*(x[idx] for x in flat))
        run.log(step, metrics | q | {"reward_mean": r.mean(), "reward_absorbing": r_abs.squeeze()}, env_steps=step)
        if step >= next_eval or step >= args.total_steps:
            next_eval += args.eval_every
            final = envs.evaluate(envs.numpy_policy(actor, device), spec.env_id, args.eval_episodes, args.seed)
            run.log(step, final, env_steps=step)
        run.tick(step)
    bar.close()
    return actor, final


# ------------------------------------------------------------ main (the loop and its run plumbing)
def main(args: Args) -> dict:
    if not 0 <= args.initial_fraction <= 1 or args.num_queries < 1 or args.fragment_length < 1:
        raise envs.CleanILError("need --num-queries >= 1, --fragment-length >= 1 and 0 <= --initial-fraction <= 1")
    gatherer = load_gatherer(args.gatherer, args)  # first: a gatherer's module may register envs (web: None yet)
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    runs.check_budget(args, off_policy=not spec.discrete)
    if args.gatherer == "web":  # clips are drawn from simulator states: refuse an env without them now
        probe = envs.make_env(env_id)
        probe.reset(seed=0)
        envs.sim_state(probe)
    from_file = labelling.load_labelled_pairs(args.labels_from) if args.labels_from else None
    shapes = None if from_file is None else (from_file["o1"].shape[-1], from_file["a1"].shape[-1])
    if shapes not in (None, (spec.obs_dim + 1, spec.act_dim)):
        raise envs.CleanILError(f"--labels-from {args.labels_from}: its fragments do not fit {env_id}'s observations "
                                f"({spec.obs_dim}) and actions ({spec.act_dim})")  # fmt: skip
    if from_file is not None:  # the reward is trained on these labels alone
        args = replace(args, num_queries=len(from_file["mu"]), initial_fraction=1.0)
    runs.set_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    act_dim = spec.act_dim  # one-hot size for discrete actions
    reward = RewardEnsemble(spec.obs_dim + 1 + act_dim, args.ensemble, args.reward_hidden).to(device)
    reward_opt = torch.optim.Adam(reward.parameters(), lr=args.reward_lr)
    pool: list[dict] = []
    labels: dict[str, torch.Tensor] = {}  # the labelled pairs: o1, a1, o2, a2 [N, L, ...] and mu [N]
    rounds, pending = [0], {}  # query rounds answered so far; a person's round under way (in checkpoints)
    run = runs.Run(args, "drlhp", env_id, args.total_steps)
    if args.gatherer == "web":
        gatherer = labelling.WebGatherer(run.dir, env_id, args.host, args.port,
                                         should_stop=lambda: run.signal is not None)  # fmt: skip

    def act_vec(a: np.ndarray) -> np.ndarray:
        return np.eye(act_dim, dtype=np.float32)[a] if spec.discrete else a.astype(np.float32)

    def predicted_returns(frags: list[dict]) -> torch.Tensor:
        """[K, n] each member's sum of raw rewards over each fragment."""
        return reward.members(stack(frags, "obs", device), stack(frags, "actions", device)).sum(-1)

    def standardize_inputs(obs: torch.Tensor, act: torch.Tensor) -> None:
        """Fix the reward nets' input standardization on these fragments (the flag stays as it is)."""
        x = torch.cat([obs, act], -1).flatten(0, -2)
        reward.norm.mean.copy_(x.mean(0))
        reward.norm.std.copy_(x.std(0).clamp_min(1e-2))
        reward.norm.mean[spec.obs_dim], reward.norm.std[spec.obs_dim] = 0.0, 1.0

    def train_reward(first: bool) -> dict:
        """Bradley-Terry on a bootstrap resample of the labels per member; r_hat renormalized."""
        n_labels = len(labels["mu"])
        boot = torch.randint(n_labels, (args.ensemble, n_labels), device=device)
        for _ in range(args.reward_updates * (5 if first else 1)):
            loss = torch.zeros((), device=device)
            for k in range(args.ensemble):
                idx = boot[k][torch.randint(n_labels, (min(args.reward_batch, n_labels),), device=device)]
                r1 = reward.members(labels["o1"][idx], labels["a1"][idx], k).sum(-1)
                r2 = reward.members(labels["o2"][idx], labels["a2"][idx], k).sum(-1)
                loss = loss + bradley_terry_loss(r1, r2, labels["mu"][idx]) / args.ensemble
            reward_opt.zero_grad()
            loss.backward()
            reward_opt.step()
        with torch.no_grad():  # r_hat normalized to zero mean, unit std over the pool's states (or the labels')
            o, a = (
                (stack(pool, "obs", device), stack(pool, "actions", device)) if pool else (labels["o1"], labels["a1"])
            )
            r = reward.members(o, a).mean(0).flatten()
            reward.out_mean.copy_(r.mean())
            reward.out_std.copy_(r.std().clamp_min(1e-6))
        return {"queries": n_labels, "losses/bradley_terry": loss.detach()}

    def query_round(n: int, first: bool, step: int) -> dict:
        """Ask about n pairs from the pool (or a person's interrupted round again), retrain the ensemble on
        all labels, renormalize its output."""
        if pending:
            pairs, first = pending["pairs"], pending["first"]
        else:
            if n <= 0 or len(pool) < 2:
                return {}
            if first:  # fix the input standardization on the first pool
                standardize_inputs(stack(pool, "obs", device), stack(pool, "actions", device))
            cand = rng.integers(0, len(pool), size=(n * max(args.oversample if args.active else 1, 2), 2))
            cand = cand[cand[:, 0] != cand[:, 1]]
            if args.active and len(cand) > n:  # the pairs whose P(1 > 2) varies most across the ensemble
                with torch.no_grad():
                    r = predicted_returns(pool)
                    p = torch.sigmoid(r[:, cand[:, 0]] - r[:, cand[:, 1]])
                cand = cand[torch.argsort(p.var(0), descending=True)[:n].cpu().numpy()]
            pairs = [(pool[i], pool[j]) for i, j in cand[:n]]
            if args.gatherer == "web":  # a run stopped while the person answers resumes at this round
                pending.update(pairs=pairs, first=first)
                run.save(step)
        public = [tuple({k: v[:, : spec.obs_dim] if k == "obs" else v for k, v in f.items()}
                        | {"id": f"{rounds[0]}-{i}-{side}"} for side, f in zip("LR", pair, strict=True))
                  for i, pair in enumerate(pairs)]  # fmt: skip
        try:
            answers = np.asarray(gatherer(public), dtype=float)
        except labelling.Stopped:
            run.close()
            raise runs.RunStopped(f"{signal.Signals(run.signal).name} while waiting for labels: this round's "
                                  f"checkpoint is in {run.dir}; continue it with python {sys.argv[0]} --resume "
                                  f"{run.dir}", 128 + run.signal) from None  # fmt: skip
        if answers.shape != (len(pairs),) or np.isinf(answers).any() or ((answers < 0) | (answers > 1)).any():
            raise envs.CleanILError(f"the gatherer must return {len(pairs)} preferences in [0, 1] (NaN: cannot tell), "
                                    f"got an array of shape {answers.shape}")  # fmt: skip
        pending.clear()
        rounds[0] += 1
        known = ~np.isnan(answers)
        pairs, answers = [p for p, k in zip(pairs, known, strict=True) if k], answers[known]
        if not pairs:  # every pair skipped
            return {}
        with torch.no_grad():  # how well the ensemble predicted these answers before training on them
            d = (predicted_returns([a for a, _ in pairs]) - predicted_returns([b for _, b in pairs])).mean(0)
        decided = answers != 0.5
        accuracy = float(((d.cpu().numpy() > 0) == (answers > 0.5))[decided].mean()) if decided.any() else 0.5
        new = {"o1": stack([a for a, _ in pairs], "obs", device), "a1": stack([a for a, _ in pairs], "actions", device),
               "o2": stack([b for _, b in pairs], "obs", device), "a2": stack([b for _, b in pairs], "actions", device),
               "mu": torch.as_tensor(answers, dtype=torch.float32, device=device)}  # fmt: skip
        labels.update({k: torch.cat([labels[k], v]) if k in labels else v for k, v in new.items()})
        return train_reward(first) | {"reward/new_label_accuracy": accuracy}

    def queries_due(t: int, horizon: int) -> int:
        """Labels due t env steps after RL started: initial + rest * log(1 + t / tau) / log(1 + horizon / tau)."""
        n0 = round(args.initial_fraction * args.num_queries)
        tau = max(1.0, args.query_decay * horizon)
        share = np.log1p(max(t, 0) / tau) / np.log1p(max(horizon, 1) / tau)
        return min(args.num_queries, n0 + round((args.num_queries - n0) * min(share, 1.0)))

    def add_fragments(new: list[dict]) -> None:
        pool.extend(new)
        del pool[: max(0, len(pool) - args.pool_size)]

    def restore(objects: dict) -> int:
        """Register the trainer's ``objects`` and the preference data with the checkpoint, load them when
        resuming (finishing a person's interrupted round first; a custom gatherer's own state is not saved),
        or train on --labels-from; return the number of labels asked."""
        oracle = gatherer.rng if isinstance(gatherer, SyntheticOracle) else None
        saved = run.restore(objects | {"reward": reward, "reward_opt": reward_opt},
                            lambda: {"pool": pool, "labels": labels, "rng": rng.bit_generator.state,
                                     "oracle": oracle and oracle.bit_generator.state, "rounds": rounds[0],
                                     "pending": dict(pending) or None})  # fmt: skip
        if saved:
            pool[:], rng.bit_generator.state, rounds[0] = saved["pool"], saved["rng"], saved.get("rounds", 0)
            labels.update({k: v.to(device) for k, v in saved["labels"].items()})
            if oracle is not None:
                oracle.bit_generator.state = saved["oracle"]
            if saved.get("pending"):
                pending.update(saved["pending"])
                run.log(run.start, query_round(0, False, run.start))
        elif from_file is not None:
            labels.update({k: torch.as_tensor(from_file[k], device=device) for k in ("o1", "a1", "o2", "a2", "mu")})
            standardize_inputs(torch.cat([labels["o1"], labels["o2"]]), torch.cat([labels["a1"], labels["a2"]]))
            decided = from_file["mu"] != 0.5  # how often the person agreed with the true returns
            agree = ((from_file["r1"] > from_file["r2"]) == (from_file["mu"] > 0.5))[decided].mean()
            print(f"--labels-from {args.labels_from}: {len(from_file['mu'])} labelled pairs, "
                  f"{100 * agree:.0f}% of the decided ones agree with the true returns")  # fmt: skip
            run.log(0, train_reward(True) | {"labels/agreement_with_true_return": float(agree)})
        return len(labels["mu"]) if labels else 0

    train = train_sac if not spec.discrete else train_ppo
    try:
        actor, final = train(args, spec, device, reward, act_vec, add_fragments, query_round, queries_due, run, restore)
    finally:
        if isinstance(gatherer, labelling.WebGatherer):
            gatherer.close()
    if args.save_model:
        envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="drlhp")
        envs.atomic_torch_save({"state_dict": reward.state_dict(), "hidden": list(args.reward_hidden),
                                 "ensemble": args.ensemble, "env_id": env_id}, run.dir / "reward.pt")  # fmt: skip
    run.record_video(envs.numpy_policy(actor, device))
    run.close()
    return final


if __name__ == "__main__":
    runs.run_cli(main, Args, "drlhp")
