"""Networks, the compiled update and replay buffers: what a reader opens beside an algorithm file.

- ``mlp``, ``Normalizer`` (fixed input standardization), ``CategoricalActor``, ``TanhGaussianActor``,
  ``TwinQNetwork`` (n critics as one batched network) and ``make_actor``; builders take dimensions.
- ``maybe_compile``: ``torch.compile`` a whole update step (losses, ``torch.autograd.grad``, optimizer,
  Polyak averaging) as one graph when the run is long enough to pay for it, eager if compiling fails.
- ``Adam``: the foreach Adam those compiled steps use; ``opt.descend(loss)`` differentiates ``loss`` with
  respect to the optimizer's parameters and takes one step.
- ``make_replay_buffer`` and ``to_tensordict``: torchrl replay of transitions stored on the device.

This module imports no other cleanil module and changes no global state when imported.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from tensordict import TensorDict
    from torchrl.data import ReplayBuffer


# ----------------------------------------------------------------------------- networks
def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (256, 256), act: type = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), act()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Normalizer(nn.Module):
    """Fixed observation standardization (mean, std buffers saved in the state dict)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class CategoricalActor(nn.Module):
    """Logits over discrete actions; DQN's Q-network has the same shape (greedy = argmax)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.norm, self.net = Normalizer(obs_dim), mlp(obs_dim, n_actions, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(obs))

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        logits = self(obs)
        if deterministic:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits).sample()


class TanhGaussianActor(nn.Module):
    """a = bias + scale * tanh(u), u ~ N(mu(s), sigma(s)^2), with log-std clamped to a range."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any,
                 hidden: tuple[int, ...] = (256, 256), log_std_range: tuple[float, float] = (-5.0, 2.0)):  # fmt: skip
        super().__init__()
        self.norm, self.net = Normalizer(obs_dim), mlp(obs_dim, 2 * act_dim, hidden)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("bias", (high + low) / 2)
        self.log_std_range = log_std_range

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(self.norm(obs)).chunk(2, dim=-1)
        lo, hi = self.log_std_range
        return mean, lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1)

    def log_prob_of_pre_tanh(self, u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) = log N(u; mu, sigma) - sum_i log(scale_i * (1 - tanh(u_i)^2))."""
        gauss = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
        # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), numerically stable
        log_det = (2 * (math.log(2) - u - nn.functional.softplus(-2 * u)) + self.scale.log()).sum(-1)
        return gauss - log_det

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized sample and its log-probability."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        return self.bias + self.scale * torch.tanh(u), self.log_prob_of_pre_tanh(u, mean, log_std)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.bias + self.scale * torch.tanh(self(obs)[0])
        return self.sample(obs)[0]


class TwinQNetwork(nn.Module):
    """n independent Q(s, a) MLPs (ReLU) evaluated as one batched network: layer k's weights are stacked
    as [n, in, out] and applied with one ``baddbmm``, so twin critics cost one matmul per layer, not n.
    Initialized like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)). Returns Q-values shaped [n, batch].
    ``layer_norm``: each hidden layer is linear -> LayerNorm (with a per-twin scale and shift) -> ReLU,
    which bounds how far Q can extrapolate to unseen actions (Ball et al. 2023, RLPD)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256), n: int = 2,
                 layer_norm: bool = False):  # fmt: skip
        super().__init__()
        dims = [obs_dim + act_dim, *hidden, 1]
        shapes = [(i, o, 1 / math.sqrt(i)) for i, o in zip(dims[:-1], dims[1:], strict=True)]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n, i, o).uniform_(-b, b)) for i, o, b in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n, 1, o).uniform_(-b, b)) for _, o, b in shapes)
        self.ln_scales = nn.ParameterList(nn.Parameter(torch.ones(n, 1, h)) for h in hidden) if layer_norm else None
        self.ln_shifts = nn.ParameterList(nn.Parameter(torch.zeros(n, 1, h)) for h in hidden) if layer_norm else None

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).expand(len(self.weights[0]), -1, -1)
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if k < len(self.weights) - 1:
                if self.ln_scales is not None:  # (x - mean) / std over the layer's units, then scale and shift
                    x = F.layer_norm(x, x.shape[-1:]) * self.ln_scales[k] + self.ln_shifts[k]
                x = torch.relu(x)
        return x.squeeze(-1)


def make_actor(obs_dim: int, act_dim: int, discrete: bool, action_low: Any = None, action_high: Any = None,
               hidden: tuple[int, ...] = (256, 256)) -> nn.Module:  # fmt: skip
    """Categorical actor over ``act_dim`` actions if ``discrete``, else a tanh-Gaussian actor on the box
    [action_low, action_high]."""
    if discrete:
        return CategoricalActor(obs_dim, act_dim, hidden)
    return TanhGaussianActor(obs_dim, act_dim, action_low, action_high, hidden)


# ----------------------------------------------------------------------------- compiled updates
COMPILE_MIN_UPDATES = 20_000  # compiling costs ~20-30 s once and saves ~2 ms per update: worth it from here


def maybe_compile(fn: Callable, enabled: bool | None, updates: int = 0, cudagraphs: bool = False) -> Callable:
    """``torch.compile`` an update step as one graph (gradients by ``torch.autograd.grad`` traced into it).
    ``enabled`` None: compile if the run makes at least ``COMPILE_MIN_UPDATES`` calls (``updates``).
    ``cudagraphs``: on a GPU, replay the compiled step as a CUDA graph (mode reduce-overhead)."""
    if not (enabled if enabled is not None else updates >= COMPILE_MIN_UPDATES):
        return fn
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):
        torch._dynamo.config.trace_autograd_ops = True
    mode = "reduce-overhead" if cudagraphs and torch.cuda.is_available() else None
    current = torch.compile(fn, fullgraph=True, mode=mode)

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal current
        try:
            return current(*args, **kwargs)
        except Exception as e:  # e.g. no C++ compiler on this machine: say so once and run eagerly
            if current is fn:
                raise
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            print(f"warning: torch.compile failed ({why}); {fn.__name__} runs eagerly", file=sys.stderr)
            current = fn
            return fn(*args, **kwargs)

    return call


class Adam:
    """Adam (Kingma & Ba 2015) on a list of tensors, written with foreach ops so that a whole update
    (loss, ``torch.autograd.grad``, optimizer step) compiles into one graph; ``torch.optim.Adam``
    breaks such a graph. Same arithmetic as ``torch.optim.Adam`` with default settings:
        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
        theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""

    def __init__(self, params: Any, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros((), device=self.params[0].device)  # a tensor: no recompile as it counts
        if self.t.is_cuda:  # fixed addresses, so that a CUDA graph can update the state in place
            for state in [*self.m, *self.v, self.t]:
                torch._dynamo.mark_static_address(state)

    def descend(self, loss: torch.Tensor) -> None:
        """Differentiate ``loss`` with respect to this optimizer's parameters only, and take one step."""
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            self.t.add_(1)
            torch._foreach_lerp_(self.m, grads, 1 - self.b1)
            torch._foreach_mul_(self.v, self.b2)
            torch._foreach_addcmul_(self.v, grads, grads, 1 - self.b2)
            denom = torch._foreach_div(torch._foreach_sqrt(self.v), (1 - self.b2**self.t).sqrt())
            torch._foreach_add_(denom, self.eps)
            update = torch._foreach_div(self.m, denom)
            torch._foreach_mul_(update, -self.lr / (1 - self.b1**self.t))
            torch._foreach_add_(self.params, update)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        """Copy in place: a compiled update keeps pointing at the same tensors."""
        with torch.no_grad():
            torch._foreach_copy_([*self.m, *self.v, self.t], [*state["m"], *state["v"], state["t"]])


# ----------------------------------------------------------------------------- replay buffers
def make_replay_buffer(capacity: int, batch_size: int | None, device: torch.device) -> ReplayBuffer:
    """Uniform replay of TensorDict transitions, stored as preallocated tensors on ``device``; ``rb.sample()``
    draws ``batch_size`` rows (None: each call says how many, ``rb.sample(n)``)."""
    from torchrl.data import LazyTensorStorage, ReplayBuffer  # imported here: torchrl takes seconds to import

    return ReplayBuffer(storage=LazyTensorStorage(capacity, device=device), batch_size=batch_size)


def to_tensordict(data: dict, device: torch.device) -> TensorDict:
    from tensordict import TensorDict

    return TensorDict({k: torch.as_tensor(v, device=device) for k, v in data.items()}, batch_size=[len(data["obs"])])
