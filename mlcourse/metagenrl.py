"""MetaGenRL at course scale: a learned policy objective, meta-trained by differentiating
through the policy step it causes (Kirsch, van Steenkiste and Schmidhuber, 2020).

Each agent of a population has its own environment, a deterministic actor π_θ, twin critics
Q_φ trained by TD3's clipped double-Q targets, and a replay buffer. The *objective* L_α is a
small network that reads, for every step of a stored transition and every action dimension,

    [ Q_φ(s, π_θ(s)),  Q_φ(s, a) − Q_φ(s, π_θ(s)),  π_θ(s)_i,  a_i,  r,  d ]

and outputs a number; the actor's loss is the mean of those numbers. Only the first and third
features depend on θ (the critic's value of the actor's own action, and the action itself), so
∇_θ L_α mixes the deterministic policy gradient (through Q_φ) with a pull of π_θ(s) towards or
away from the stored actions a — DDPG's loss −Q_φ(s, π_θ(s)) is one setting of α. Reading each
action dimension separately makes one objective usable for any action size.

Meta-training (:func:`objective_meta_loss`): the actor takes one SGD step on L_α,
θ' = θ − η ∇_θ L_α(θ), and α is trained to maximise the critic's value of the updated actor,
Q_φ(s, π_θ'(s)), differentiating through the step (second order in θ). Meta-testing freezes α
and trains fresh agents from scratch with it, on environments it has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
NUM_FEATURES = 6


def mlp(sizes: tuple[int, ...], activation=nn.ReLU) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """π_θ(s) = max_action · tanh(MLP(s)).

    Example:
        >>> Actor(3, 1, max_action=2.0)(torch.zeros(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(self, obs_size: int, action_size: int, *, max_action: float, hidden=(64, 64)):
        super().__init__()
        self.net = mlp((obs_size, *hidden, action_size))
        self.max_action = float(max_action)

    def forward(self, obs: Tensor) -> Tensor:
        return self.max_action * torch.tanh(self.net(obs))


class TwinCritic(nn.Module):
    """Two independent Q-networks (TD3); ``forward`` returns both, ``(..., )`` each."""

    def __init__(self, obs_size: int, action_size: int, hidden=(64, 64)):
        super().__init__()
        self.q1 = mlp((obs_size + action_size, *hidden, 1))
        self.q2 = mlp((obs_size + action_size, *hidden, 1))

    def forward(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class LearnedObjective(nn.Module):
    """L_α: per-step, per-action-dimension features → a loss to minimise (see the module
    docstring for the features).

    Args:
        hidden: widths of the hidden layers (tanh between them).

    Example:
        >>> objective = LearnedObjective()
        >>> features = torch.zeros(7, 2, NUM_FEATURES)  # 7 transitions, 2 action dimensions
        >>> objective(features).shape
        torch.Size([])
    """

    def __init__(self, hidden=(32, 32)):
        super().__init__()
        self.net = mlp((NUM_FEATURES, *hidden, 1), activation=nn.Tanh)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).mean()


def objective_features(
    actor: nn.Module,
    actor_params: Params,
    critic: TwinCritic,
    batch: dict[str, Tensor],
    value_scale: Tensor | float = 1.0,
) -> Tensor:
    """``(B, action_size, NUM_FEATURES)`` inputs of L_α for a batch of transitions, under the
    actor parameters ``actor_params`` (differentiable in them; the critic is held fixed).

    ``value_scale`` divides the two value features (e.g. the spread of the critic's values),
    so that one objective reads environments whose returns differ in scale.
    """
    obs, actions = batch["obs"], batch["actions"]
    own = functional_call(actor, actor_params, (obs,))
    q_own = critic(obs, own)[0] / value_scale
    with torch.no_grad():
        q_taken = critic(obs, actions)[0] / value_scale
    size = actions.shape[-1]
    per_step = torch.stack(
        [q_own, q_taken - q_own.detach(), batch["rewards"], batch["dones"]], dim=-1
    )
    per_step = per_step[:, None, :].expand(-1, size, -1)
    scale = getattr(actor, "max_action", 1.0)
    per_dim = torch.stack([own / scale, actions / scale], dim=-1)
    return torch.cat([per_step[..., :1], per_step[..., 1:2], per_dim, per_step[..., 2:]], dim=-1)


def ddpg_loss(
    actor: nn.Module,
    actor_params: Params,
    critic: TwinCritic,
    batch: dict[str, Tensor],
    value_scale: Tensor | float = 1.0,
) -> Tensor:
    """The hand-written objective the learned one is compared with: −Q_φ(s, π_θ(s))."""
    own = functional_call(actor, actor_params, (batch["obs"],))
    return -(critic(batch["obs"], own)[0] / value_scale).mean()


def objective_meta_loss(
    objective: nn.Module,
    actor: nn.Module,
    actor_params: Params,
    critic: TwinCritic,
    batch: dict[str, Tensor],
    *,
    step_size: float,
    value_scale: Tensor | float = 1.0,
) -> Tensor:
    """−Q_φ(s, π_θ'(s)) with θ' = θ − step_size · ∇_θ L_α(θ): differentiable in α (and, to
    second order, through the step). Minimising it over α trains the objective."""
    params = {n: p.detach().requires_grad_() for n, p in actor_params.items()}
    loss = objective(objective_features(actor, params, critic, batch, value_scale))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    updated = {n: p - step_size * g for (n, p), g in zip(params.items(), grads, strict=True)}
    own = functional_call(actor, updated, (batch["obs"],))
    return -(critic(batch["obs"], own)[0] / value_scale).mean()


class ReplayBuffer:
    """A ring buffer of transitions on one device.

    Example:
        >>> buffer = ReplayBuffer(100, obs_size=3, action_size=1)
        >>> buffer.add(torch.zeros(4, 3), torch.zeros(4, 1), torch.ones(4), torch.zeros(4, 3),
        ...            torch.zeros(4))
        >>> len(buffer), buffer.sample(2, torch.Generator())["obs"].shape
        (4, torch.Size([2, 3]))
    """

    def __init__(self, capacity: int, *, obs_size: int, action_size: int, device=None):
        self.capacity, self.size, self.next = capacity, 0, 0
        zeros = lambda *shape: torch.zeros(capacity, *shape, device=device)  # noqa: E731
        self.data = {
            "obs": zeros(obs_size),
            "actions": zeros(action_size),
            "rewards": zeros(),
            "next_obs": zeros(obs_size),
            "dones": zeros(),
        }

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, dones) -> None:
        """Stores a batch of transitions (leading dimension: one per environment)."""
        values = {
            "obs": obs,
            "actions": actions,
            "rewards": rewards,
            "next_obs": next_obs,
            "dones": dones,
        }
        count = obs.shape[0]
        index = (self.next + torch.arange(count)) % self.capacity
        for key, value in values.items():
            self.data[key][index.to(self.data[key].device)] = value.to(self.data[key].dtype)
        self.next = (self.next + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        if self.size == 0:
            raise RuntimeError("the replay buffer is empty: collect transitions first")
        index = torch.randint(self.size, (batch_size,), generator=generator)
        device = self.data["obs"].device
        return {key: value[index.to(device)] for key, value in self.data.items()}


@dataclass
class TD3Settings:
    """The critic's training (shared by every agent, learned objective or not)."""

    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    critic_lr: float = 1e-3


def critic_loss(
    critic: TwinCritic,
    target_critic: TwinCritic,
    target_actor: nn.Module,
    batch: dict[str, Tensor],
    settings: TD3Settings,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TD3's clipped double-Q regression loss on a batch of transitions."""
    with torch.no_grad():
        next_actions = target_actor(batch["next_obs"])
        max_action = getattr(target_actor, "max_action", 1.0)
        noise = torch.randn(next_actions.shape, generator=generator, device=next_actions.device)
        noise = (noise * settings.policy_noise * max_action).clamp(
            -settings.noise_clip * max_action, settings.noise_clip * max_action
        )
        next_actions = (next_actions + noise).clamp(-max_action, max_action)
        q1, q2 = target_critic(batch["next_obs"], next_actions)
        target = batch["rewards"] + settings.gamma * (1 - batch["dones"]) * torch.minimum(q1, q2)
    q1, q2 = critic(batch["obs"], batch["actions"])
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target ← (1 − τ) target + τ source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)
