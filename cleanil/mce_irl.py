"""Maximum Causal Entropy inverse RL on MDPs with known dynamics.

Ziebart, Bagnell & Dey (2010), "Modeling Interaction via the Principle of Maximum Causal Entropy",
ICML, https://www.cs.cmu.edu/~bziebart/publications/maximum-causal-entropy.pdf; Ziebart (2010),
PhD thesis, CMU-ML-10-110.

The expert is modelled as soft-optimal for an unknown reward r_theta. Soft value iteration gives
the maximum causal entropy policy for r_theta (time-dependent over a finite horizon H):

    Q_t(s, a) = r_theta(s, a) + gamma * sum_s' T(s' | s, a) V_{t+1}(s'),    V_H = 0
    V_t(s)    = log sum_a exp Q_t(s, a),    pi_t(a | s) = exp(Q_t(s, a) - V_t(s))

and a forward pass gives its discounted state-action occupancy rho_theta(s, a) = sum_t gamma^t P(s_t = s, a_t = a).
The log-likelihood of the demonstrations is concave in a linear reward; its gradient is the
difference of feature expectations:

    grad_theta L = sum_{s,a} (rho_E(s, a) - rho_theta(s, a)) grad_theta r_theta(s, a)

so the learned policy's occupancy matches the expert's at the optimum. Occupancies are
normalized to sum to 1 in the update, so the step size does not depend on the horizon.

- Any gymnasium env whose unwrapped env has a transition table ``P`` (FrozenLake-v1, CliffWalking-v1,
  Taxi-v4, ...) and a seeded random MDP (``--env RandomMDP``). Transitions that terminate lead to
  an absorbing state with zero reward whose reward is not learned.
- Reward: linear in one-hot state or state-action features, or a small MLP over them.
- The expert is soft-optimal for the true reward divided by ``--expert-temperature`` (small values
  give a near-deterministic expert). ``--exact`` uses its occupancy directly; otherwise
  ``--num-demos`` trajectories are sampled from it (or read from ``--demos``: integer ``obs`` and
  ``actions`` in the README's format).
- Evaluation is exact, not sampled: the expected true return of the optimal (deterministic) policy
  for the learned reward (``eval/return``) and of the MCE policy, soft-optimal for it
  (``eval/mce_policy_return``), normalized between the uniform random policy (0) and the expert (1).
  The expert is soft, so an optimal policy can score above 1. Grid worlds also get a PNG heat map of
  the learned reward beside the true one (runs/<run>/reward.png).
- The absorbing state has a single action: ending an episode earns no entropy bonus, which would
  otherwise reward the soft expert for falling into FrozenLake's holes.

Run: python cleanil/mce_irl.py --env FrozenLake-v1 --exact  (optimal policy for the learned reward
normalized 1.14, MCE policy 0.999, occupancy gap < 1e-3 after ~950 updates, ~5 s on 1 CPU)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below (no per-env config files: evaluation is exact and runs take seconds); flags override them.
    # ---- run plumbing, common to every cleanil algorithm
    env: str = "FrozenLake-v1"
    """environment: a gymnasium id whose unwrapped env has a transition table P (module:EnvName-v0 for an env that
    the module registers on import), or RandomMDP"""
    capture_video: bool = False
    """record one episode of the learned policy (the most likely action) to runs/<run>/videos/final.mp4"""
    seed: int = 0
    """random seed for torch, numpy, the random MDP and the sampled demonstrations"""
    device: str = "cpu"
    """torch device: auto (cuda if available, else cpu), cpu or cuda"""
    total_steps: int = 2_000
    """maximum number of reward updates (Adam steps)"""
    num_demos: int | None = None
    """expert trajectories to imitate (ignored with --exact); default: every episode of --demos, else 100
    sampled from the expert"""
    demos: str | None = None
    """path to a .npz demo file with integer obs and actions; by default trajectories are sampled from the expert"""
    eval_every: int = 100
    """evaluate the learned reward every this many updates (and at the end)"""
    eval_episodes: int = 0
    """unused: evaluation is exact (expected return from the occupancy), not sampled"""
    track: bool = False
    """log to Weights & Biases (offline unless a login or WANDB_MODE says otherwise)"""
    wandb_project: str = "cleanil"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity (team or user); None uses your default"""
    compile: bool = False
    """unused: the tabular computations are too small to gain from torch.compile"""
    save_model: bool = True
    """save the learned reward and its soft-optimal policy to runs/<run>/model.pt"""
    run_dir: str = "runs"
    """folder under which each run gets its own directory"""
    run_name: str | None = None
    """name of the run's directory under run_dir (default: <env>__<algo>__<seed>__<unix time>)"""
    overwrite: bool = False
    """replace an existing run directory of that name (without it, the run refuses to start)"""
    resume: str | None = None
    """run directory (runs/<name>) to continue from its checkpoint, with its saved settings as defaults"""
    checkpoint_every: int = 100
    """write runs/<run>/checkpoint.pt every this many steps; also at the end and on Ctrl-C/SIGTERM"""
    # ---- the algorithm: maximum causal entropy IRL
    env_kwargs: str = "{}"
    """keyword arguments for gym.make as JSON, e.g. '{"is_slippery": false}' for FrozenLake"""
    horizon: int | None = None
    """finite horizon H; None takes the env's time limit (100 if it has none)"""
    infinite: bool = False
    """infinite-horizon discounted problem (needs gamma < 1; stationary policy; ignores --horizon)"""
    gamma: float = 1.0
    """discount factor"""
    exact: bool = False
    """match the expert's exact occupancy instead of sampled demonstrations"""
    expert_temperature: float = 0.01
    """the expert is soft-optimal for true reward / expert_temperature"""
    features: Literal["state", "state_action"] = "state_action"
    """one-hot features of the learned reward"""
    reward_net: Literal["linear", "mlp"] = "linear"
    """reward linear in the features, or an MLP over them"""
    hidden: tuple[int, ...] = (32,)
    """hidden layer sizes of the MLP reward"""
    lr: float = 1.0
    """Adam learning rate of the reward parameters (decays linearly to 0 over --total-steps)"""
    l2_weight: float = 0.0
    """weight of an L2 penalty on the reward parameters (a Gaussian prior; helps with few demos)"""
    tolerance: float = 1e-3
    """stop early once the learner's occupancy is within this of the expert's (max abs over the env's (s, a))"""
    random_mdp_states: int = 32
    """number of states of --env RandomMDP"""
    random_mdp_actions: int = 4
    """number of actions of --env RandomMDP"""
    random_mdp_branching: int = 3
    """number of possible next states of each state-action pair of --env RandomMDP"""


# -------------------------------------------------------------------- tabular MDPs (the algorithm)
@dataclass
class TabularMDP:
    """Dynamics T[s, a, s'], true reward r[s, a], initial distribution; the last state is absorbing."""

    transitions: torch.Tensor  # [S, A, S], float64, rows sum to 1
    reward: torch.Tensor  # [S, A]
    init: torch.Tensor  # [S]
    horizon: int
    grid: tuple[int, int] | None  # (rows, cols) of the env's states, for heat maps

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[1]


def mdp_from_env(env_id: str, horizon: int | None) -> TabularMDP:
    """Read gymnasium's ``P[s][a] = [(prob, s', reward, terminated), ...]`` into dense tables."""
    env = envs.make_env(env_id)
    table = getattr(env.unwrapped, "P", None)
    n = env.observation_space.n if isinstance(env.observation_space, gym.spaces.Discrete) else None
    if table is None or n is None or not isinstance(env.action_space, gym.spaces.Discrete):
        raise envs.CleanILError(
            f"mce_irl needs known dynamics: {env_id} has no transition table P over discrete "
            "states and actions (try FrozenLake-v1, CliffWalking-v1, Taxi-v4 or RandomMDP)"
        )
    absorbing, n_actions = n, env.action_space.n
    T, r = np.zeros((n + 1, n_actions, n + 1)), np.zeros((n + 1, n_actions))
    for s in range(n):
        for a in range(n_actions):
            for prob, s2, rew, terminated in table[s][a]:
                T[s, a, absorbing if terminated else s2] += prob
                r[s, a] += prob * rew  # r(s, a) = E[r | s, a]
    T[absorbing, :, absorbing] = 1.0
    init = np.append(env.unwrapped.initial_state_distrib, 0.0)
    unwrapped = env.unwrapped
    shape = getattr(unwrapped, "desc", None)
    grid = shape.shape if shape is not None else getattr(unwrapped, "shape", None)
    grid = tuple(grid) if grid is not None and int(np.prod(grid)) == n else None
    horizon = horizon or env.spec.max_episode_steps or 100
    return TabularMDP(torch.tensor(T), torch.tensor(r), torch.tensor(init / init.sum()), horizon, grid)


def random_mdp(n_states: int, n_actions: int, branching: int, horizon: int | None, seed: int) -> TabularMDP:
    """A seeded random MDP: each (s, a) reaches ``branching`` random states with Dirichlet
    probabilities; reward r(s) ~ N(0, 1); start state uniform; no episode ends (the absorbing
    state that every TabularMDP carries last is never reached)."""
    rng = np.random.default_rng(seed)
    T = np.zeros((n_states + 1, n_actions, n_states + 1))
    for s in range(n_states):
        for a in range(n_actions):
            T[s, a, rng.choice(n_states, branching, replace=False)] = rng.dirichlet(np.ones(branching))
    T[n_states, :, n_states] = 1.0
    r = np.repeat(np.append(rng.normal(size=n_states), 0.0)[:, None], n_actions, axis=1)
    init = np.append(np.full(n_states, 1.0 / n_states), 0.0)
    return TabularMDP(torch.tensor(T), torch.tensor(r), torch.tensor(init), horizon or 100, None)


def feature_index(n_states: int, n_actions: int, kind: str) -> torch.Tensor:
    """Which one-hot feature phi(s, a) is on: s (state features) or s * A + a (state-action), [S, A]."""
    states = torch.arange(n_states)[:, None].expand(n_states, n_actions)
    return states if kind == "state" else states * n_actions + torch.arange(n_actions)


@dataclass
class Dynamics:
    """T(s' | s, a) stored sparsely: the K likeliest next states of each (s, a) and their probabilities
    (K = the largest number of possible next states), so that planning costs O(S A K) per step."""

    next_states: torch.Tensor  # [S, A, K], long
    next_probs: torch.Tensor  # [S, A, K]

    @classmethod
    def from_dense(cls, T: torch.Tensor) -> Dynamics:
        probs, states = T.topk(int((T > 0).sum(-1).max()), dim=-1)
        return cls(states, probs)

    def expect(self, V: torch.Tensor) -> torch.Tensor:
        """sum_s' T(s' | s, a) V(s'), shape [S, A]."""
        return (self.next_probs * V[self.next_states]).sum(-1)

    def push(self, rho_t: torch.Tensor) -> torch.Tensor:
        """sum_{s, a} rho_t(s, a) T(s' | s, a), shape [S]."""
        mass = (rho_t[..., None] * self.next_probs).flatten()
        return torch.zeros_like(rho_t[:, 0]).index_add_(0, self.next_states.flatten(), mass)


class RewardNet(nn.Module):
    """r_theta(s, a) = theta . phi(s, a) (linear) or MLP(phi(s, a)) for one-hot phi; the absorbing
    (last) state's reward is fixed at 0. A linear layer applied to a one-hot vector is a column
    lookup, W phi(s, a) = W[:, index(s, a)], which is how it is computed here."""

    def __init__(self, index: torch.Tensor, kind: str, hidden: tuple[int, ...]):
        super().__init__()
        self.register_buffer("index", index)
        n_features, width = int(index.max()) + 1, 1 if kind == "linear" else hidden[0]
        self.first = nn.Linear(n_features, width, bias=kind != "linear", dtype=torch.float64)
        self.rest = None if kind == "linear" else nn.Sequential(nn.ReLU(), nets.mlp(width, 1, hidden[1:]).double())
        if kind == "linear":
            nn.init.zeros_(self.first.weight)

    def forward(self) -> torch.Tensor:
        """The reward table r_theta [S, A]."""
        h = self.first.weight.t()[self.index]  # W phi(s, a)
        r = h.squeeze(-1) if self.rest is None else self.rest(h + self.first.bias).squeeze(-1)
        return torch.cat([r[:-1], torch.zeros_like(r[-1:])])


# ------------------------------------------------------------------- soft planning (the algorithm)
def value_iteration(
    reward: torch.Tensor,
    T: Dynamics,
    gamma: float,
    horizon: int | None,
    soft: bool = True,
    tol: float = 1e-12,
    max_iters: int = 100_000,
) -> torch.Tensor:
    """Log-policy of the maximum causal entropy policy for ``reward`` [S, A] (``soft``), or of an
    optimal deterministic policy (``soft=False``: max instead of logsumexp, log 0 = -inf off the argmax).

    Finite horizon: log pi_t for t = 0..H-1, shape [H, S, A]. Infinite horizon (``horizon=None``,
    gamma < 1): the stationary fixed point, shape [1, S, A].
        Q_t(s, a) = r(s, a) + gamma sum_s' T(s'|s, a) V_{t+1}(s'),  V_t(s) = logsumexp_a Q_t(s, a)
        pi_t(a | s) = exp(Q_t(s, a) - V_t(s))
    """

    def backup(V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Q = reward + gamma * T.expect(V)
        Q[-1, 1:] = -torch.inf  # the absorbing state has a single action: ending earns no entropy bonus
        if soft:
            V = torch.logsumexp(Q, -1)
            return V, Q - V[:, None]
        V = Q.max(-1).values
        return V, nn.functional.one_hot(Q.argmax(-1), Q.shape[-1]).to(Q.dtype).log()

    V = torch.zeros_like(reward[:, 0])
    if horizon is None:
        for _ in range(max_iters):
            V_new, log_pi = backup(V)
            done = (V_new - V).abs().max() < tol
            V = V_new
            if done:
                break
        return log_pi.unsqueeze(0)
    log_pi = torch.empty(horizon, *reward.shape, dtype=reward.dtype, device=reward.device)
    for t in reversed(range(horizon)):
        V, log_pi[t] = backup(V)
    return log_pi


def occupancy(
    log_pi: torch.Tensor,
    T: Dynamics,
    init: torch.Tensor,
    gamma: float,
    horizon: int | None,
    tol: float = 1e-12,
    max_iters: int = 100_000,
) -> torch.Tensor:
    """Discounted state-action occupancy rho(s, a) = sum_t gamma^t P(s_t = s, a_t = a).

    d_0 = init;  rho_t(s, a) = d_t(s) pi_t(a|s);  d_{t+1}(s') = sum_{s,a} rho_t(s, a) T(s'|s, a).
    Sums to H for gamma = 1, (1 - gamma^H) / (1 - gamma) for a finite H, 1 / (1 - gamma) if infinite.
    """
    pi, d, rho = log_pi.exp(), init.clone(), torch.zeros_like(log_pi[0])
    steps = range(max_iters) if horizon is None else range(horizon)
    for t in steps:
        rho_t = d[:, None] * pi[min(t, len(pi) - 1)]  # a [1, S, A] policy is stationary
        rho += gamma**t * rho_t
        d = T.push(rho_t)
        if horizon is None and gamma ** (t + 1) * d.sum() < tol:
            break
    return rho


def expected_return(rho: torch.Tensor, reward: torch.Tensor) -> float:
    """Expected discounted return of the policy with occupancy rho: sum_{s,a} rho(s, a) r(s, a)."""
    return float((rho * reward).sum())


# ---------------------------------------------------------------------------- loss (the algorithm)
def mce_loss(reward: torch.Tensor, rho_expert: torch.Tensor, rho_learner: torch.Tensor) -> torch.Tensor:
    """Surrogate whose gradient is minus the MCE log-likelihood gradient:
    L(theta) = sum_{s,a} (rho_theta(s, a) - rho_E(s, a)) r_theta(s, a), with rho_theta held fixed,
    both occupancies normalized to sum to 1."""
    diff = rho_learner.detach() / rho_learner.sum().detach() - rho_expert / rho_expert.sum()
    return (diff * reward).sum()


# ------------------------------------------------------------------- demonstrations (run plumbing)
def sample_trajectories(log_pi: torch.Tensor, mdp: TabularMDP, num: int, seed: int) -> dict:
    """Sample ``num`` trajectories of length H from the (time-dependent) policy, stopping at the
    absorbing state; returned in the demo format with integer obs and actions."""
    rng = np.random.default_rng(seed)
    pi, T, init = log_pi.exp().cpu().numpy(), mdp.transitions.cpu().numpy(), mdp.init.cpu().numpy()
    absorbing, out = mdp.n_states - 1, {k: [] for k in envs.DEMO_KEYS}
    for _ in range(num):
        s = rng.choice(mdp.n_states, p=init)
        for t in range(mdp.horizon):
            p = pi[min(t, len(pi) - 1), s]
            a = rng.choice(mdp.n_actions, p=p / p.sum())
            s2 = rng.choice(mdp.n_states, p=T[s, a])
            terminated, truncated = s2 == absorbing, t == mdp.horizon - 1 and s2 != absorbing
            row = (s, a, float(mdp.reward[s, a]), s if terminated else s2, terminated, truncated)
            for k, v in zip(envs.DEMO_KEYS, row, strict=True):
                out[k].append(v)
            if terminated:
                break
            s = s2
    return {k: np.array(v) for k, v in out.items()}


def demo_occupancy(demos: dict, mdp: TabularMDP, gamma: float, horizon: int | None) -> torch.Tensor:
    """Empirical occupancy: mean over trajectories of sum_t gamma^t 1[s_t = s, a_t = a]; steps after
    termination, up to ``horizon`` (None: forever), count in the absorbing state and its single action."""
    rho = np.zeros((mdp.n_states, mdp.n_actions))
    ends = np.flatnonzero(demos["terminated"] | demos["truncated"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    for start, end in zip(starts, ends, strict=True):
        t = np.arange(end - start + 1)
        np.add.at(rho, (demos["obs"][start : end + 1], demos["actions"][start : end + 1]), gamma**t)
        if demos["terminated"][end]:
            rest = gamma ** len(t) / (1 - gamma) if horizon is None else (gamma ** np.arange(len(t), horizon)).sum()
            rho[-1, 0] += rest
    return torch.tensor(rho / len(ends))


def load_tabular_demos(path: str, env_id: str, mdp: TabularMDP, num: int | None) -> dict:
    """A user's .npz: integer obs in [0, S) and actions in [0, A), episodes marked as in the README."""
    spec = envs.EnvSpec(env_id, mdp.n_states - 1, True, mdp.n_actions, obs_discrete=True)
    return envs.select_episodes(envs.load_demo_file(path, spec), num, 0, path)[0]


# -------------------------------------------------------------------------- outputs (run plumbing)
def save_heat_map(path: str, mdp: TabularMDP, learned: torch.Tensor) -> None:
    """Learned and true reward per state (mean over actions) side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(4 + mdp.grid[1] * 0.8, 0.8 * mdp.grid[0] + 1.2), squeeze=False)
    for ax, (title, r) in zip(
        axes[0],
        (("learned reward (mean over actions)", learned), ("true reward (mean over actions)", mdp.reward)),
        strict=True,
    ):
        image = ax.imshow(r[:-1].mean(-1).reshape(mdp.grid).cpu().numpy(), cmap="viridis")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046, shrink=min(1.0, 2 * mdp.grid[0] / mdp.grid[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def greedy_policy(log_pi: torch.Tensor) -> Callable:
    """Batched obs -> most likely action, for one episode from its reset: a finite-horizon log-policy
    [H, S, A] is read at the episode's step t (the last one past H)."""
    t = 0

    def policy(obs: np.ndarray) -> np.ndarray:
        nonlocal t
        table = log_pi[min(t, len(log_pi) - 1)] if log_pi.dim() == 3 else log_pi
        t += 1
        return table[torch.as_tensor(obs)].argmax(-1).numpy()

    return policy


# -------------------------------------------------------- training (the loop and its run plumbing)
def main(args: Args) -> dict:
    device = runs.get_device(args.device)
    runs.check_budget(args, names=("total_steps", "eval_every", "num_demos"))  # evaluation is exact: no episodes
    if args.infinite and not 0 <= args.gamma < 1:
        raise envs.CleanILError(f"--infinite needs --gamma in [0, 1), got {args.gamma}")
    if args.expert_temperature <= 0:
        raise envs.CleanILError(f"--expert-temperature must be positive, got {args.expert_temperature}")
    if args.env == "RandomMDP" and args.capture_video:
        raise envs.CleanILError("RandomMDP has no env to render: --capture-video needs a gymnasium env")
    if args.env == "RandomMDP":
        mdp = random_mdp(
            args.random_mdp_states, args.random_mdp_actions, args.random_mdp_branching, args.horizon, args.seed
        )
        env_id = "RandomMDP"
    else:
        env_id = envs.resolve_env_id(args.env, args.env_kwargs)
        mdp = mdp_from_env(env_id, args.horizon)
    T, init = Dynamics.from_dense(mdp.transitions.to(device)), mdp.init.to(device)
    true_reward = mdp.reward.to(device)
    horizon = None if args.infinite else mdp.horizon
    runs.set_seed(args.seed)
    torch.set_flush_denormal(True)  # probabilities of actions the reward rules out underflow; keep them fast

    def solve(reward: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_pi = value_iteration(reward, T, args.gamma, horizon)
        return log_pi, occupancy(log_pi, T, init, args.gamma, horizon)

    # the expert, the uniform random policy, and the target occupancy
    expert_log_pi, rho_expert_exact = solve(true_reward / args.expert_temperature)
    uniform = torch.full_like(expert_log_pi[:1], -np.log(mdp.n_actions))
    uniform[0, -1] = expert_log_pi[0, -1]  # the absorbing state's single action
    random_return = expected_return(occupancy(uniform, T, init, args.gamma, horizon), true_reward)
    expert_return = expected_return(rho_expert_exact, true_reward)
    if args.exact:
        rho_expert, source = rho_expert_exact, "exact expert occupancy"
    else:
        if args.demos is not None:
            demos = load_tabular_demos(args.demos, env_id, mdp, args.num_demos)
        else:
            demos = sample_trajectories(
                expert_log_pi, mdp, 100 if args.num_demos is None else args.num_demos, args.seed
            )
        args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json
        rho_expert = demo_occupancy(demos, mdp, args.gamma, horizon).to(device)
        source = f"{args.num_demos} demonstrations ({len(demos['obs'])} transitions)"

    def normalized(ret: float) -> float:
        return (ret - random_return) / (expert_return - random_return)

    def optimal_return(reward: torch.Tensor) -> float:
        """True expected return of the optimal deterministic policy for ``reward``."""
        log_pi = value_iteration(reward, T, args.gamma, horizon, soft=False)
        return expected_return(occupancy(log_pi, T, init, args.gamma, horizon), true_reward)

    index = feature_index(mdp.n_states, mdp.n_actions, args.features)
    reward_net = RewardNet(index, args.reward_net, args.hidden).to(device)
    optimizer = torch.optim.Adam(reward_net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / args.total_steps)
    run = runs.Run(args, "mce_irl", env_id, args.total_steps)
    run.restore({"reward_net": reward_net, "optimizer": optimizer, "schedule": schedule})
    print(
        f"{env_id}: {mdp.n_states - 1} states + absorbing, {mdp.n_actions} actions, "
        f"horizon {'infinite' if horizon is None else horizon}, gamma {args.gamma}; matching {source}; expert return "
        f"{expert_return:.3f}, random {random_return:.3f}, optimal {optimal_return(true_reward):.3f}"
    )

    start, bar = time.time(), runs.progress(args.total_steps, "mce_irl", run.start)
    for step in range(run.start + 1, args.total_steps + 1):
        reward = reward_net()
        log_pi, rho = solve(reward.detach())
        # max |rho - rho_E| over the env's state-action pairs; the absorbing state we add is reported apart
        gap = float((rho - rho_expert)[:-1].abs().max())
        converged = gap < args.tolerance
        if step % args.eval_every == 0 or step == args.total_steps or converged:
            learned, learned_log_pi = reward.detach(), log_pi
            ret, mce_ret = optimal_return(learned), expected_return(rho, true_reward)
            metrics = {
                "occupancy_gap": gap,
                "occupancy_gap_absorbing": float((rho - rho_expert)[-1].abs().max()),
                "occupancy_gap_to_exact_expert": float((rho - rho_expert_exact)[:-1].abs().max()),
                "eval/return": ret,
                "eval/normalized_return": normalized(ret),
                "eval/mce_policy_return": mce_ret,
                "eval/mce_policy_normalized_return": normalized(mce_ret),
                "train_seconds": time.time() - start,
            }
            run.log(step, metrics)
        if converged:
            break
        # one Adam step on the MCE surrogate (+ optional L2 prior)
        loss = mce_loss(reward, rho_expert, rho)
        if args.l2_weight:
            loss = loss + args.l2_weight * sum((p**2).sum() for p in reward_net.parameters())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.update(1)
        run.tick(step)
    bar.close()
    print(
        f"stopped after {step} updates ({time.time() - start:.1f}s), occupancy gap {gap:.2e}; normalized return of "
        f"the optimal policy for the learned reward {metrics['eval/normalized_return']:.4f}, "
        f"of the MCE policy {metrics['eval/mce_policy_normalized_return']:.4f}"
    )

    if args.save_model:
        envs.atomic_torch_save(
            {
                "env_id": env_id,
                "reward": learned.cpu(),
                "log_policy": learned_log_pi.cpu(),
                "reward_net": reward_net.state_dict(),
                "args": vars(args),
            },
            run.dir / "model.pt",
        )
    if mdp.grid is not None:
        save_heat_map(str(run.dir / "reward.png"), mdp, learned)
        print(f"reward heat map: {run.dir / 'reward.png'}")
    if args.capture_video:
        run.record_video(greedy_policy(learned_log_pi.cpu()))
    run.close()
    return metrics


if __name__ == "__main__":
    runs.run_cli(main, Args, "mce_irl")
