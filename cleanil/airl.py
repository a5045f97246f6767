"""AIRL: adversarial inverse reinforcement learning, with an off-policy SAC generator or PPO.

Fu, Luo & Levine (2018), "Learning Robust Rewards with Adversarial Inverse Reinforcement Learning",
ICLR, https://arxiv.org/abs/1710.11248. Absorbing states and the off-policy generator follow
Kostrikov et al. (2019), "Discriminator-Actor-Critic" (DAC), https://arxiv.org/abs/1809.02925.

    f(s, a, s') = g(s, a) + gamma h(s') - h(s)          (g(s) with --state-only)
    D(s, a, s') = exp(f) / (exp(f) + pi(a|s)),   i.e. logit d = f(s, a, s') - log pi(a|s)

D is trained with binary cross-entropy (expert = 1, policy = 0), log pi from the current policy, not
differentiated. The policy maximizes log D - log(1 - D) = f - log pi: entropy-regularized RL with
reward f. At optimum g recovers the expert's reward up to a constant (state-only g; up to shaping
otherwise); g is the part that transfers. Two changes keep the logit bounded with SAC:
- Tempered: d = f - alpha log pi with SAC's learned temperature, SAC's own per-step objective
  (--pi-weight sets it; PPO keeps 1). The expert's often saturated actions have log pi ~ -800 under
  the learner on HalfCheetah; with weight 1 expert logits reached 300-1700.
- Floored (continuous actions; --no-log-pi-floor: none): log pi(a|s) is at least the uniform policy's,
  -sum_i log(high_i - low_i); else -log pi alone separates the expert early and f only pushes the
  policy down. Once pi beats the uniform policy on the expert's actions, D has the paper's form.

Generators: ``--generator sac`` (continuous actions; DAC's off-policy setting) maximizes
E[sum gamma^t (f - alpha log pi)], f recomputed by the current net for every replayed transition;
``--expert-ratio rho`` fills a share rho of each minibatch with expert transitions (rewarded by f too),
``--critic-layernorm`` puts LayerNorm in the critics (Ball et al. 2023, RLPD). ``--generator ppo``:
the paper's on-policy setting with PPO for TRPO and reward f - log pi; the only choice for discrete
actions. ``--disc-replay N`` lets its discriminator sample the last N policy transitions, so past
terminations stay in view (else f(s_abs) drifts up unseen and, on CartPole, the policy learns to fall).

- Gradient penalty (Gulrajani et al. 2017, as in DAC): lambda E[(||grad_z f(z)||_2 - 1)^2] at
  z = eps z_E + (1 - eps) z_pi over the standardized inputs z = [s, a, s'], leaving out pairs that
  touch the absorbing state (it lies close to expert states in z: ending an episode would pay).
- Absorbing states (DAC): s -> [s, 0]; a terminating (s, a, s') becomes (s, a, s_abs), s_abs =
  [0, ..., 0, 1], followed by (s_abs, 0, s_abs), in expert and policy data. g(s_abs) and h(s_abs) are
  learned; s_abs has one action (zeroed, log pi = 0); values bootstrap through it: SAC's target uses
  Q(s_abs, 0) with no entropy term, PPO V(s_abs) = r(s_abs) / (1 - gamma). ``--no-absorbing`` masks
  terminal values and h(s') instead.
- Reward transfer: g is saved as runs/<run>/reward.pt; ``--reward-from PATH`` trains a fresh SAC on
  it, true reward hidden, and reports the true return (``--shaped-transfer``: on f, whose shaping
  keeps the optimal policies in the same dynamics, Ng et al. 1999). Learn a reward meant for reuse
  with --state-only --generator ppo: a fresh SAC climbs g from PPO-AIRL on HalfCheetah (2 of 3
  benchmark seeds), not g from SAC-AIRL (arXiv:2403.14593).

Run: python cleanil/airl.py --env HalfCheetah  (the defaults, with no config file for HalfCheetah: 10 demos,
SAC generator, 300k env steps; normalized 1.05, 0.97 and 0.99 on benchmark seeds 1-3, 65-95 min on one CPU core;
records in benchmark_results/)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cleanil import envs, nets, runs


@dataclass
class Args:
    # Defaults below; configs/airl/<EnvId>.yaml overrides them for that env (its file is printed at start),
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
    total_steps: int = 300_000
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
    """compile the update steps with torch.compile (eager if that fails); None: if >= 20k updates, where it pays"""
    cudagraphs: bool = False
    """with a compiled update on a GPU, replay it as a CUDA graph (torch.compile mode reduce-overhead)"""
    save_model: bool = True
    """save the policy to runs/<run>/model.pt and the learned reward to runs/<run>/reward.pt"""
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
    # ---- the algorithm: AIRL
    generator: Literal["sac", "ppo"] | None = None
    """policy optimizer: sac (off-policy, continuous actions) or ppo (on-policy); None: sac if it applies"""
    state_only: bool = False
    """learn a state-only reward g(s) instead of g(s, a) (what transfers across dynamics)"""
    reward_from: str | None = None
    """a reward.pt saved by airl.py: train a fresh SAC policy on it (true reward hidden) instead of AIRL"""
    shaped_transfer: bool = False
    """with --reward-from: train on f = g + gamma h(s') - h(s), not g alone (same optimal policies in the same env)"""
    absorbing: bool = True
    """absorbing states for terminating episodes, as in DAC (--no-absorbing masks terminal values)"""
    gp_weight: float = 10.0
    """weight lambda of the gradient penalty on f (0 switches it off)"""
    disc_hidden: tuple[int, ...] = (100, 100)
    """hidden layer sizes of g and h (tanh units)"""
    disc_lr: float = 3e-4
    """learning rate of g and h"""
    disc_updates: int | None = None
    """discriminator updates per SAC update (sac) or per rollout (ppo); None: 1 (sac) or 10 (ppo)"""
    pi_weight: float | None = None
    """weight w of log pi in the logit f - w log pi; None: SAC's temperature alpha with sac, 1 (the paper) with ppo"""
    log_pi_floor: bool = True
    """continuous actions: floor log pi(a|s) in the logit at the uniform policy's, -sum_i log(high_i - low_i)"""
    disc_batch_size: int = 256
    """policy samples per discriminator update (and as many expert samples)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer sizes of the actor and critics"""
    lr: float = 3e-4
    """learning rate of the actor and critics"""
    gamma: float = 0.99
    """discount factor (of the RL problem and of the shaping term)"""
    batch_size: int = 256
    """SAC minibatch, or PPO minibatch"""
    # ---- SAC generator
    buffer_size: int = 1_000_000
    """replay capacity"""
    learning_starts: int = 10_000
    """env steps of random actions before updates start"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    expert_ratio: float = 0.0
    """share of each SAC minibatch drawn from the expert's transitions, rewarded by f too (0: replay alone)"""
    critic_layernorm: bool = False
    """LayerNorm in the critics' hidden layers (RLPD's companion to mixing in data the policy did not collect)"""
    log_every: int = 1_000
    """log losses every this many env steps"""
    # ---- PPO generator
    disc_replay: int = 0
    """policy transitions the discriminator samples from, FIFO over past rollouts; 0: the current rollout (the paper)"""
    num_envs: int = 8
    """parallel envs"""
    num_steps: int = 128
    """steps per env per rollout"""
    update_epochs: int = 10
    """optimization epochs per rollout"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    clip_coef: float = 0.2
    """policy ratio clip"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """gradient clipping"""
    anneal_lr: bool = True
    """decay the PPO learning rate linearly to 0 over the run"""


# ------------------------------------------------------------------ reward network (the algorithm)
class RewardNet(nn.Module):
    """f(s, a, s') = g(s[, a]) + gamma mask h(s') - h(s) over flag-augmented states, inputs standardized
    with the expert data's statistics; the action is zeroed in the absorbing state (a single action)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], state_only: bool, gamma: float):
        super().__init__()
        self.obs_dim, self.state_only, self.gamma = obs_dim, state_only, gamma
        self.obs_norm, self.act_norm = nets.Normalizer(obs_dim), nets.Normalizer(act_dim)
        self.g = nets.mlp(obs_dim + (0 if state_only else act_dim), 1, hidden, nn.Tanh)
        self.h = nets.mlp(obs_dim, 1, hidden, nn.Tanh)

    def z(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Standardized inputs [s, a, s']."""
        act = self.act_norm(act) * (1 - obs[..., -1:])
        return torch.cat([self.obs_norm(obs), act, self.obs_norm(next_obs)], -1)

    def g_of_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.g(z[..., : self.obs_dim] if self.state_only else z[..., : -self.obs_dim]).squeeze(-1)

    def f_of_z(self, z: torch.Tensor, mask: torch.Tensor | float = 1.0) -> torch.Tensor:
        h_s, h_next = self.h(z[..., : self.obs_dim]).squeeze(-1), self.h(z[..., -self.obs_dim :]).squeeze(-1)
        return self.g_of_z(z) + self.gamma * mask * h_next - h_s

    def f_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(z) (mask 1) and grad_z f = [grad_s g - grad h(s), grad_a g, gamma grad h(s')], by hand."""
        n = self.obs_dim
        g, grad_g = tanh_mlp_input_grad(self.g, z[..., :n] if self.state_only else z[..., :-n])
        h_s, grad_h_s = tanh_mlp_input_grad(self.h, z[..., :n])
        h_next, grad_h_next = tanh_mlp_input_grad(self.h, z[..., -n:])
        grad_g = F.pad(grad_g, (0, z.shape[-1] - n - grad_g.shape[-1]))  # zero for a and s' it does not read
        grad = torch.cat([grad_g[..., :n] - grad_h_s, grad_g[..., n:], self.gamma * grad_h_next], -1)
        return g + self.gamma * h_next - h_s, grad

    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The learned reward g(s[, a]) alone (what --reward-from trains on)."""
        return self.g_of_z(self.z(obs, act, obs))

    def f(self, b: dict) -> torch.Tensor:
        """f(s, a, s') of a batch of transitions (SAC's reward; SAC adds -alpha log pi itself)."""
        return self.f_of_z(self.z(b["obs"], b["act"], b["next_obs"]), b["mask"])


BATCH_KEYS = ("obs", "act", "next_obs", "mask")  # the transition fields the update steps read


def with_absorbing(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
                   absorbing: bool) -> dict[str, np.ndarray]:  # fmt: skip
    """Transitions over flag-augmented states, s -> [s, 0]. With ``absorbing``, a terminated (s, a, s')
    becomes (s, a, s_abs) and is followed by (s_abs, 0, s_abs), and every row bootstraps (mask 1);
    without, terminated rows are masked (mask 0). ``act`` is (n, k): action vectors or one-hots."""
    flag = np.zeros((len(obs), 1), np.float32)
    o, o2 = np.concatenate([obs, flag], 1).astype(np.float32), np.concatenate([next_obs, flag], 1).astype(np.float32)
    a, term = act.astype(np.float32), terminated.astype(bool)
    mask = np.ones(len(o), np.float32) if absorbing else (~term).astype(np.float32)
    if absorbing and term.any():
        s_abs = np.zeros((int(term.sum()), o.shape[1]), np.float32)
        s_abs[:, -1] = 1
        o2[term] = s_abs[0]
        o, o2 = np.concatenate([o, s_abs]), np.concatenate([o2, s_abs])
        a, mask = np.concatenate([a, np.zeros((len(s_abs), a.shape[1]), np.float32)]), np.ones(len(o), np.float32)
    return {"obs": o, "act": a, "next_obs": o2, "mask": mask}


# -------------------------------------------------------------------------- losses (the algorithm)
def airl_logit(f: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """log D - log(1 - D) for D = exp(f) / (exp(f) + pi(a|s)):  d = f - log pi(a|s)."""
    return f - log_pi


def discriminator_loss(expert_logits: torch.Tensor, policy_logits: torch.Tensor, expert_w: torch.Tensor | None = None,
                       policy_w: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Binary cross-entropy, expert = 1, policy = 0: -E_E[log D] - E_pi[log(1 - D)]
    = E_E[softplus(-d)] + E_pi[softplus(d)], each expectation a mean weighted by ``*_w`` if given."""
    expert_w = torch.ones_like(expert_logits) if expert_w is None else expert_w
    policy_w = torch.ones_like(policy_logits) if policy_w is None else policy_w
    return (expert_w * F.softplus(-expert_logits)).sum() / expert_w.sum() + (
        policy_w * F.softplus(policy_logits)
    ).sum() / policy_w.sum()


def tanh_mlp_input_grad(net: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y(z) and grad_z y(z) of a tanh MLP, by hand: h_k = tanh(W_k h_{k-1} + b_k), h_0 = z, y = w^T h_K + c,
        grad_z y = W_1^T diag(1 - h_1^2) ... W_K^T diag(1 - h_K^2) w.
    First-order in the weights (no double backward), so the penalty compiles with the rest of the update.
    ``net`` is one nn.Linear or an nn.Sequential of Linear, Tanh, ..., Linear; any other network is refused."""
    layers = [net] if isinstance(net, nn.Linear) else list(net) if isinstance(net, nn.Sequential) else [None]
    kinds = [nn.Linear if i % 2 == 0 else nn.Tanh for i in range(len(layers))]
    if len(layers) % 2 == 0 or not all(type(m) is k for m, k in zip(layers, kinds, strict=True)):
        raise ValueError(f"the hand-written input gradient holds for tanh MLPs only, not for {net}")
    linears = layers[::2]
    hs, h = [], z
    for layer in linears[:-1]:
        h = torch.tanh(layer(h))
        hs.append(h)
    out, grad = linears[-1](h).squeeze(-1), linears[-1].weight.expand(len(z), -1)
    for layer, h_k in zip(reversed(linears[:-1]), reversed(hs), strict=True):
        grad = (grad * (1 - h_k * h_k)) @ layer.weight
    return out, grad


def gradient_penalty(value_and_grad: Callable, z_expert: torch.Tensor, z_policy: torch.Tensor,
                     keep: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """E[(||grad_z f(z)||_2 - 1)^2] at z = eps z_E + (1 - eps) z_pi, eps ~ U(0, 1) per pair, averaged
    over the pairs with ``keep`` = 1 (all by default); ``value_and_grad(z)`` returns (f(z), grad_z f(z))."""
    eps = torch.rand(len(z_expert), 1, device=z_expert.device)
    _, grad = value_and_grad(eps * z_expert + (1 - eps) * z_policy)
    keep = torch.ones(len(grad), device=grad.device) if keep is None else keep
    return ((grad.norm(dim=-1) - 1).pow(2) * keep).sum() / keep.sum().clamp_min(1)


def log_pi(actor: nn.Module, obs: torch.Tensor, act: torch.Tensor, discrete: bool,
           floor: float | None = None) -> torch.Tensor:  # fmt: skip
    """log pi(a|s) of flag-augmented states and action vectors (one-hots if discrete); 0 in the absorbing
    state. Continuous actions are mapped back through atanh, clipped just inside the bounds; with
    ``floor``, max(log pi(a|s), floor)."""
    with torch.no_grad():
        if discrete:
            logp = (torch.log_softmax(actor(obs[:, :-1]), -1) * act).sum(-1)
        else:
            u = torch.atanh(((act - actor.bias) / actor.scale).clamp(-1 + 1e-5, 1 - 1e-5))
            logp = actor.log_prob_of_pre_tanh(u, *actor(obs[:, :-1]))
        logp = logp if floor is None else logp.clamp_min(floor)
        return logp * (1 - obs[:, -1])


def disc_logit(reward_net: RewardNet, actor: nn.Module, x: dict, z: torch.Tensor, w: torch.Tensor, discrete: bool,
               floor: float | None) -> torch.Tensor:  # fmt: skip
    """The discriminator's logit d = f(s, a, s') - w log pi(a|s) of the transitions ``x`` (standardized ``z``)."""
    return airl_logit(reward_net.f_of_z(z, x["mask"]), w * log_pi(actor, x["obs"], x["act"], discrete, floor))


def next_state_value(next_value: torch.Tensor, term: torch.Tensor, r_abs: torch.Tensor, gamma: float,
                     absorbing: bool) -> torch.Tensor:  # fmt: skip
    """PPO's V(s'): the critic's after a step or a time-limit end; after a termination V(s_abs) =
    r(s_abs) / (1 - gamma), the absorbing state's exact value (it loops with reward r(s_abs)), or 0 with
    --no-absorbing."""
    v_end = r_abs / (1 - gamma) if absorbing else torch.zeros_like(r_abs)
    return (1 - term) * next_value + term * v_end


def sac_critic_target(next_obs: torch.Tensor, reward: torch.Tensor, mask: torch.Tensor, actor: nn.Module,
                      targets: nn.Module, alpha: torch.Tensor, gamma: float) -> torch.Tensor:  # fmt: skip
    """y = r + gamma * mask * (min_j Q'_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s');
    in the absorbing state a' = 0 with no entropy term (a single action)."""
    with torch.no_grad():
        live = 1 - next_obs[:, -1:]
        a2, logp2 = actor.sample(next_obs[:, :-1])
        a2, logp2 = a2 * live, logp2 * live.squeeze(-1)
        q_next = targets(next_obs, a2).min(0).values - alpha * logp2
        return reward + gamma * mask * q_next


# ---------------------------------------------------------------------- generators (the algorithm)
def sample_rows(data: dict, n: int) -> dict:
    """n rows drawn uniformly with replacement, the same rows of every array: whole transitions."""
    idx = torch.randint(len(data["obs"]), (n,), device=data["obs"].device)
    return {k: v[idx] for k, v in data.items()}


def with_expert_rows(batch: dict, expert: dict, n: int) -> dict:
    """The SAC minibatch with its first n replay rows replaced by n expert transitions drawn uniformly."""
    e = sample_rows(expert, n)
    return {k: torch.cat([batch[k][n:], e[k]]) for k in BATCH_KEYS}


def train_sac(args: Args, spec: envs.EnvSpec, device: torch.device, actor: nn.Module, reward_fn: Callable,
              update_disc: Callable | None, run: runs.Run, state: dict,
              expert: dict | None = None) -> dict:  # fmt: skip
    """Off-policy generator: one env step, one discriminator update (none with --reward-from), one SAC
    update on rewards recomputed by ``reward_fn(batch)``; with ``expert`` transitions, --expert-ratio."""
    critics = nets.TwinQNetwork(spec.obs_dim + 1, spec.act_dim, args.hidden, layer_norm=args.critic_layernorm)
    critics = critics.to(device)
    targets = copy.deepcopy(critics).requires_grad_(False)
    log_alpha = torch.zeros(1, device=device, requires_grad=True)
    actor_opt, critic_opt = nets.Adam(actor.parameters(), args.lr), nets.Adam(critics.parameters(), args.lr)
    alpha_opt = nets.Adam([log_alpha], args.lr)
    fixed_weight = torch.tensor(1.0 if args.pi_weight is None else args.pi_weight, device=device)  # w, if given

    def update(b: dict) -> dict:
        alpha = log_alpha.exp().detach()
        with torch.no_grad():  # the reward of every replayed transition, from the current reward net
            reward = reward_fn(b)
        y = sac_critic_target(b["next_obs"], reward, b["mask"], actor, targets, alpha, args.gamma)
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
        return {"losses/critic": critic_loss.detach(), "losses/actor": actor_loss.detach(), "alpha": alpha,
                "reward_mean": reward.mean(), "replay/absorbing_share": b["obs"][:, -1].mean()}  # fmt: skip

    update = nets.maybe_compile(update, args.compile, args.total_steps, args.cudagraphs)
    rb = nets.make_replay_buffer(args.buffer_size, None, device)  # SAC and discriminator draw their own sizes
    run.restore(state | {
        "actor": actor, "critics": critics, "targets": targets, "log_alpha": log_alpha, "actor_opt": actor_opt,
        "critic_opt": critic_opt, "alpha_opt": alpha_opt, "replay": rb})  # fmt: skip
    env = envs.make_vec_env(spec.env_id, 1)
    env.single_action_space.seed(args.seed + run.start)
    obs = env.reset(seed=args.seed + run.start)[0]  # a resumed run starts a new episode
    bar = runs.progress(args.total_steps, "airl-sac" if update_disc else "sac-on-reward", run.start)
    metrics, disc_metrics = {}, {}
    n_expert = round(args.expert_ratio * args.batch_size) if expert is not None else 0
    for step in range(run.start + 1, args.total_steps + 1):
        if step <= args.learning_starts:
            action = np.array([env.single_action_space.sample()])
        else:
            with torch.no_grad():
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()
        next_obs, _, term, _, info = env.step(action)  # the true reward is not kept
        rb.extend(nets.to_tensordict(with_absorbing(obs, action, envs.true_next_obs(next_obs, info), term,
                                                     args.absorbing), device))  # fmt: skip
        obs = next_obs
        bar.update(1)
        if step > args.learning_starts:
            b = rb.sample(args.batch_size)
            for i in range(args.disc_updates if update_disc else 0):
                fresh = i > 0 or args.disc_batch_size > args.batch_size  # else the SAC minibatch's first rows
                d = rb.sample(args.disc_batch_size) if fresh else b[: args.disc_batch_size]
                w = log_alpha.exp().detach()[0] if args.pi_weight is None else fixed_weight
                disc_metrics = update_disc({k: d[k] for k in BATCH_KEYS} | {"pi_weight": w})
            b = {k: b[k] for k in BATCH_KEYS}
            metrics = update(with_expert_rows(b, expert, n_expert) if n_expert else b) | disc_metrics
        if step % args.log_every == 0 and metrics:
            run.log(step, metrics, env_steps=step)
        if step % args.eval_every == 0 or step == args.total_steps:
            evaluation = envs.evaluate(envs.numpy_policy(actor, device), spec.env_id, args.eval_episodes, args.seed)
            run.log(step, evaluation, env_steps=step)
        run.tick(step)
    bar.close()
    return evaluation


def train_ppo(args: Args, spec: envs.EnvSpec, device: torch.device, actor: nn.Module, reward_net: RewardNet,
              update_disc: Callable, run: runs.Run, state: dict) -> dict:  # fmt: skip
    """On-policy generator: roll out, update the discriminator on the rollout, relabel it with
    f - log pi, PPO epochs."""
    critic = nets.mlp(spec.obs_dim, 1, args.hidden).to(device)
    params = list(actor.parameters()) + list(critic.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, eps=1e-5)
    disc_rb = nets.make_replay_buffer(args.disc_replay, args.disc_batch_size, device) if args.disc_replay else None
    run.restore(state | {"actor": actor, "critic": critic, "optimizer": optimizer}
                | ({"disc_replay": disc_rb} if disc_rb is not None else {}))  # fmt: skip
    vec_env = envs.make_vec_env(spec.env_id, args.num_envs)
    obs = vec_env.reset(seed=args.seed + run.start)[0]
    n, T = args.num_envs, args.num_steps
    s_abs = F.one_hot(torch.tensor([spec.obs_dim], device=device), spec.obs_dim + 1).float()  # [0, ..., 0, 1]
    weight = torch.tensor(1.0 if args.pi_weight is None else args.pi_weight, device=device)  # w of f - w log pi

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

    step, next_eval = run.start, (run.start // args.eval_every + 1) * args.eval_every
    bar = runs.progress(args.total_steps, "airl-ppo", step)
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
        r = {k: np.stack(v).reshape(T * n, *np.shape(v[0])[1:]) for k, v in rows.items()}  # time-major rows
        act_vec = np.eye(spec.act_dim, dtype=np.float32)[r["act"]] if spec.discrete else np.tanh(r["act"])
        if not spec.discrete:  # the reward net sees the env's action a = bias + scale tanh(u)
            act_vec = spec.action_low + (spec.action_high - spec.action_low) * (act_vec + 1) / 2
        # discriminator on this rollout's transitions (with absorbing rows), then relabel the rollout
        d = nets.to_tensordict(with_absorbing(r["obs"], act_vec, r["next_obs"], r["term"], args.absorbing), device)
        if disc_rb is not None:  # a replay keeps past terminations in view when the current policy no longer ends
            disc_rb.extend(d)
        for _ in range(args.disc_updates):
            b = disc_rb.sample() if disc_rb else d[torch.randint(len(d), (args.disc_batch_size,), device=device)]
            disc_metrics = update_disc({k: b[k] for k in BATCH_KEYS} | {"pi_weight": weight})
        tensors = {k: torch.as_tensor(v, device=device) for k, v in r.items()}
        o, o2, logp_t = tensors["obs"].float(), tensors["next_obs"].float(), tensors["logp"]
        term, trunc = tensors["term"].view(T, n).float(), tensors["trunc"].view(T, n).float()
        with torch.no_grad():  # reward f(s, a, s') - w log pi(a|s) of the rollout's rows, d's first T n
            f = reward_net.f_of_z(reward_net.z(d["obs"][: T * n], d["act"][: T * n], d["next_obs"][: T * n]),
                                  d["mask"][: T * n])  # fmt: skip
            reward = airl_logit(f, weight * logp_t).view(T, n)
            r_abs = reward_net.f_of_z(reward_net.z(s_abs, torch.zeros_like(d["act"][:1]), s_abs))  # log pi = 0
            value, next_value = critic(o).view(T, n), critic(o2).view(T, n)
        next_value = next_state_value(next_value, term, r_abs, args.gamma, args.absorbing)
        # GAE: delta_t = r_t + gamma V(s'_t) - V(s_t);  A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}
        done, adv, last = torch.maximum(term, trunc), torch.zeros(T, n, device=device), torch.zeros(n, device=device)
        delta = reward + args.gamma * next_value - value
        for t in reversed(range(T)):
            last = delta[t] + args.gamma * args.gae_lambda * (1 - done[t]) * last
            adv[t] = last
        ret, adv = (adv + value).flatten(), adv.flatten()
        for _ in range(args.update_epochs):
            for idx in torch.randperm(T * n, device=device).split(args.batch_size):
                metrics = update(o[idx], tensors["act"][idx], logp_t[idx], adv[idx], ret[idx])
        metrics |= disc_metrics | {"reward_mean": reward.mean(), "reward_absorbing": r_abs.squeeze()}
        run.log(step, metrics, env_steps=step)
        if step >= next_eval or step >= args.total_steps:
            next_eval += args.eval_every
            evaluation = envs.evaluate(envs.numpy_policy(actor, device), spec.env_id, args.eval_episodes, args.seed)
            run.log(step, evaluation, env_steps=step)
        run.tick(step)
    bar.close()
    return evaluation


# ------------------------------------------------------------ main (the loop and its run plumbing)
def load_reward(path: str, spec: envs.EnvSpec, device: torch.device) -> RewardNet:
    """A reward.pt saved by airl.py, checked against the env."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = RewardNet(spec.obs_dim + 1, spec.act_dim, tuple(blob["hidden"]), blob["state_only"], blob["gamma"])
        net.load_state_dict(blob["state_dict"])
    except FileNotFoundError:
        raise envs.CleanILError(f"--reward-from {path}: no such file") from None
    except (RuntimeError, KeyError, TypeError, EOFError, OSError) as e:
        raise envs.CleanILError(f"--reward-from {path}: not an AIRL reward for {spec.env_id} ({e})") from None
    return net.to(device).requires_grad_(False)


def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env, args.env_kwargs)
    spec = envs.env_spec(env_id)
    device = runs.get_device(args.device)
    generator = args.generator or ("ppo" if spec.discrete else "sac")
    if generator == "sac" and spec.discrete:
        raise envs.CleanILError(f"--generator sac needs continuous actions; {env_id} has discrete ones: use ppo")
    if not 0 <= args.expert_ratio < 1:
        raise envs.CleanILError(f"--expert-ratio must lie in [0, 1), got {args.expert_ratio}")
    if args.reward_from and generator != "sac":
        raise envs.CleanILError("--reward-from trains SAC: it needs continuous actions and --generator sac")
    runs.check_budget(args, off_policy=generator == "sac")
    disc_updates = (1 if generator == "sac" else 10) if args.disc_updates is None else args.disc_updates
    args = replace(args, disc_updates=disc_updates)  # the effective setting, recorded in config.json
    runs.set_seed(args.seed)
    actor = envs.make_actor(spec, args.hidden).to(device)

    if args.reward_from:  # reward transfer: a fresh SAC on the saved g, true reward hidden
        net = load_reward(args.reward_from, spec, device)
        run = runs.Run(args, "airl_reward_transfer", env_id, args.total_steps)
        reward_fn = net.f if args.shaped_transfer else lambda b: net.reward(b["obs"], b["act"])
        final = train_sac(args, spec, device, actor, reward_fn, None, run, {})
        if args.save_model:
            envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="sac_on_airl_reward")
        run.record_video(envs.numpy_policy(actor, device))
        run.close()
        return final

    demos = envs.load_demos(env_id, args.num_demos, args.demos)
    args = replace(args, num_demos=len(envs.episode_ends(demos)))  # the count used, recorded in config.json
    act = np.eye(spec.act_dim, dtype=np.float32)[demos["actions"]] if spec.discrete else demos["actions"]
    expert = with_absorbing(demos["obs"], act, demos["next_obs"], demos["terminated"], args.absorbing)
    expert = {k: torch.as_tensor(v, device=device) for k, v in expert.items()}
    reward_net = RewardNet(spec.obs_dim + 1, expert["act"].shape[1], args.disc_hidden, args.state_only, args.gamma)
    reward_net = reward_net.to(device)
    for norm, x in ((reward_net.obs_norm, expert["obs"]), (reward_net.act_norm, expert["act"])):
        norm.mean[:], norm.std[:] = x.mean(0), x.std(0).clamp_min(1e-2)
    reward_net.obs_norm.mean[-1], reward_net.obs_norm.std[-1] = 0.0, 1.0  # the absorbing flag stays 0/1
    disc_opt = nets.Adam(reward_net.parameters(), args.disc_lr)
    # log pi of the uniform policy on the action box: the expert's deterministic actions, often at the bounds,
    # get log pi of -100s under the stochastic learner; floored there, the logit leaves f to separate them
    uniform = -float(np.log(spec.action_high - spec.action_low).sum()) if not spec.discrete else None
    floor = uniform if args.log_pi_floor else None

    def update_disc(p: dict) -> dict:
        """One step on BCE(d = f - w log pi) + lambda GP(f), with as many expert as policy samples."""
        e = sample_rows(expert, len(p["obs"]))  # as many expert transitions as policy ones
        z_e, z_pi = reward_net.z(e["obs"], e["act"], e["next_obs"]), reward_net.z(p["obs"], p["act"], p["next_obs"])
        logit_e, logit_pi = (disc_logit(reward_net, actor, x, z, p["pi_weight"], spec.discrete, floor)
                             for x, z in ((e, z_e), (p, z_pi)))  # fmt: skip
        w_abs = 1 / (1 - args.gamma) - 1  # s_abs stands for the discounted tail 1 + gamma + ... = 1 / (1 - gamma)
        loss = discriminator_loss(logit_e, logit_pi, 1 + w_abs * e["obs"][:, -1], 1 + w_abs * p["obs"][:, -1])
        keep = [(1 - x["obs"][:, -1]) * (1 - x["next_obs"][:, -1]) for x in (e, p)]  # away from s_abs
        gp = gradient_penalty(reward_net.f_and_grad, z_e, z_pi, keep[0] * keep[1]) if args.gp_weight > 0 else 0 * loss
        disc_opt.descend(loss + args.gp_weight * gp)
        accuracy = ((logit_e > 0).float().mean() + (logit_pi < 0).float().mean()) / 2
        return {"losses/discriminator": loss.detach(), "losses/gradient_penalty": gp.detach(),
                "disc/accuracy": accuracy, "disc/expert_logit": logit_e.mean().detach(),
                "disc/policy_logit": logit_pi.mean().detach()}  # fmt: skip

    rollouts = args.total_steps // (args.num_envs * args.num_steps)  # PPO: disc_updates calls each
    calls = args.total_steps if generator == "sac" else rollouts * args.disc_updates
    update_disc = nets.maybe_compile(update_disc, args.compile, calls, args.cudagraphs)  # if it pays

    run = runs.Run(args, f"airl_{generator}", env_id, args.total_steps)
    state = {"reward": reward_net, "disc_opt": disc_opt}  # saved in checkpoints with the generator's own
    if generator == "sac":
        final = train_sac(args, spec, device, actor, reward_net.f, update_disc, run, state, expert)
    else:
        final = train_ppo(args, spec, device, actor, reward_net, update_disc, run, state)
    if args.save_model:
        envs.save_policy(run.dir / "model.pt", actor, spec, args.hidden, algo="airl")
        blob = {"state_dict": reward_net.state_dict(), "hidden": list(args.disc_hidden), "gamma": args.gamma,
                "state_only": args.state_only, "env_id": env_id, "args": asdict(args)}  # fmt: skip
        envs.atomic_torch_save(blob, run.dir / "reward.pt")
    run.record_video(envs.numpy_policy(actor, device))
    run.close()
    return final


if __name__ == "__main__":
    runs.run_cli(main, Args, "airl")
