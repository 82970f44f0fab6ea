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

from mlcourse.envs import (
    MountainCarContinuousVectorEnv,
    Navigation2DVectorEnv,
    PendulumVectorEnv,
)
from mlcourse.models import MLP
from mlcourse.runtime import make_adam, restore_generator
from mlcourse.stats import mean_and_stderr

Params = dict[str, Tensor]
NUM_FEATURES = 6


class Actor(nn.Module):
    """π_θ(s) = max_action · tanh(MLP(s)).

    Example:
        >>> Actor(3, 1, max_action=2.0)(torch.zeros(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(self, obs_size: int, action_size: int, *, max_action: float, hidden=(64, 64)):
        super().__init__()
        self.net = MLP(obs_size, action_size, hidden)
        self.max_action = float(max_action)

    def forward(self, obs: Tensor) -> Tensor:
        return self.max_action * torch.tanh(self.net(obs))


class TwinCritic(nn.Module):
    """Two independent Q-networks (TD3); ``forward`` returns both, ``(..., )`` each."""

    def __init__(self, obs_size: int, action_size: int, hidden=(64, 64)):
        super().__init__()
        self.q1 = MLP(obs_size + action_size, 1, hidden)
        self.q2 = MLP(obs_size + action_size, 1, hidden)

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
        self.net = MLP(NUM_FEATURES, 1, hidden, activation=nn.Tanh)

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

    Values are centred on the batch's mean Q(s, a) and divided by ``value_scale`` (e.g. the
    spread of the critic's values), rewards standardised over the batch, actions divided by
    the action range: one objective then reads environments whose scales differ by orders of
    magnitude (a tanh network would saturate on raw pendulum values).
    """
    obs, actions = batch["obs"], batch["actions"]
    own = functional_call(actor, actor_params, (obs,))
    with torch.no_grad():
        q_taken = critic(obs, actions)[0]
        centre = q_taken.mean()
        q_taken = (q_taken - centre) / value_scale
        rewards = batch["rewards"]
        rewards = (rewards - rewards.mean()) / rewards.std().clamp(min=1e-3)
    q_own = (critic(obs, own)[0] - centre) / value_scale
    size = actions.shape[-1]
    per_step = torch.stack([q_own, q_taken - q_own.detach(), rewards, batch["dones"]], dim=-1)
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
    """−Q_φ(s, π_θ'(s)) with θ' = θ − step_size · g / ‖g‖, g = ∇_θ L_α(θ): differentiable in α
    (and, to second order, through the step). Minimising it over α trains the objective. The
    value is reported relative to the batch's mean Q(s, a), in units of ``value_scale``: below
    zero, the updated actor's actions are worth more than the stored ones.

    The step is normalised because the actor's real update (Adam) ignores the scale of its
    loss: without it, the meta-gradient would reward an objective for growing its own scale,
    which changes nothing in training but saturates the network.
    """
    params = {n: p.detach().requires_grad_() for n, p in actor_params.items()}
    loss = objective(objective_features(actor, params, critic, batch, value_scale))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    norm = torch.sqrt(sum((g**2).sum() for g in grads)) + 1e-8
    updated = {n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}
    own = functional_call(actor, updated, (batch["obs"],))
    with torch.no_grad():  # a constant: centres the figure, leaves the gradient alone
        centre = critic(batch["obs"], batch["actions"])[0].mean()
    return -((critic(batch["obs"], own)[0] - centre) / value_scale).mean()


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
        # drawn on the CPU (an agent's generator lives there), then moved
        noise = torch.randn(next_actions.shape, generator=generator).to(next_actions)
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


# ---------------------------------------------------------------------------------------------
# Agents, the population, and meta-training.

ENVS = ("pendulum", "mountaincar", "navigation")


def make_env(name: str, generator: torch.Generator, device=None):
    """One environment of family ``name`` with its task drawn by ``generator``; returns
    ``(env, reset_options, max_action)``.

    - ``pendulum``: mass and length each U[0.7, 1.3] (Gymnasium's pendulum at 1, 1);
    - ``mountaincar``: engine power U[0.0012, 0.0018] (Gymnasium's: 0.0015);
    - ``navigation``: a goal U[−0.5, 0.5]², the same in every episode (it is not observed).
    """
    u = torch.rand(2, generator=generator)
    if name == "pendulum":
        mass, length = 0.7 + 0.6 * u[0], 0.7 + 0.6 * u[1]
        return PendulumVectorEnv(1, mass=mass, length=length, device=device), None, 2.0
    if name == "mountaincar":
        power = 0.0012 + 0.0006 * u[0]
        return MountainCarContinuousVectorEnv(1, power=power, device=device), None, 1.0
    if name == "navigation":
        goal = (u - 0.5)[None].to(device)
        return Navigation2DVectorEnv(1, device=device), {"goal": goal}, 0.1
    raise ValueError(f"unknown environment family {name!r}; choose one of {ENVS}")


def value_scale(batch: dict[str, Tensor], critic: TwinCritic) -> Tensor:
    """A scale for the value features: the spread of Q over the batch (detached)."""
    with torch.no_grad():
        q = critic(batch["obs"], batch["actions"])[0]
    return q.std().clamp(min=1e-3)


class Agent:
    """One member of the population: environment, actor, twin critics with targets, replay
    buffer, and the bookkeeping of its episodes.

    Args:
        env_name: one of :data:`ENVS`.
        seed: seeds the task, the networks, exploration and sampling.
        hidden: widths of the actor's and critics' hidden layers.
        actor_lr, critic_lr: Adam step sizes.
        buffer_size: transitions kept.
        exploration: standard deviation of the Gaussian action noise, as a fraction of the
            action range.
        device: where everything lives.
    """

    def __init__(
        self,
        env_name: str,
        seed: int,
        *,
        hidden=(64, 64),
        actor_lr: float = 1e-3,
        critic_lr: float = 1e-3,
        buffer_size: int = 100_000,
        exploration: float = 0.1,
        device=None,
    ):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self.env_name = env_name
        self.env, self.reset_options, self.max_action = make_env(
            env_name, self.generator, self.device
        )
        obs_size = self.env.single_observation_space.shape[0]
        action_size = self.env.single_action_space.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(obs_size, action_size, max_action=self.max_action, hidden=hidden)
            self.critic = TwinCritic(obs_size, action_size, hidden=hidden)
        self.target_actor = Actor(obs_size, action_size, max_action=self.max_action, hidden=hidden)
        self.target_critic = TwinCritic(obs_size, action_size, hidden=hidden)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())
        for module in (self.actor, self.critic, self.target_actor, self.target_critic):
            module.to(self.device)
        self.actor_opt = make_adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = make_adam(self.critic.parameters(), lr=critic_lr)
        self.buffer = ReplayBuffer(
            buffer_size, obs_size=obs_size, action_size=action_size, device=self.device
        )
        self.exploration = exploration
        self.obs, _ = self.env.reset(seed=seed, options=self.reset_options)
        self.episode_return = 0.0
        self.returns: list[float] = []  # of finished episodes

    @property
    def actor_params(self) -> Params:
        return dict(self.actor.named_parameters())

    def collect(self, random: bool = False) -> None:
        """One environment step (uniformly random actions while ``random``), stored."""
        with torch.no_grad():
            if random:
                u = torch.rand(1, self.env.single_action_space.shape[0], generator=self.generator)
                action = (2 * u - 1).to(self.device) * self.max_action
            else:
                action = self.actor(self.obs)
                noise = torch.randn(action.shape, generator=self.generator).to(self.device)
                action = (action + noise * self.exploration * self.max_action).clamp(
                    -self.max_action, self.max_action
                )
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.buffer.add(self.obs, action, reward.float(), next_obs, terminated.float())
        self.episode_return += float(reward[0])
        if bool(terminated[0] or truncated[0]):
            self.returns.append(self.episode_return)
            self.episode_return = 0.0
            next_obs, _ = self.env.reset(options=self.reset_options)
        self.obs = next_obs

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        return self.buffer.sample(batch_size, self.generator)

    def update_critic(self, batch: dict[str, Tensor], settings: TD3Settings) -> float:
        loss = critic_loss(
            self.critic, self.target_critic, self.target_actor, batch, settings, self.generator
        )
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return loss.item()

    def actor_loss(self, batch: dict[str, Tensor], objective: nn.Module | None) -> Tensor:
        """The learned objective's loss (DDPG's −Q when ``objective`` is None)."""
        scale = value_scale(batch, self.critic)
        if objective is None:
            return ddpg_loss(self.actor, self.actor_params, self.critic, batch, scale)
        features = objective_features(self.actor, self.actor_params, self.critic, batch, scale)
        return objective(features)

    def update_actor(self, batch, objective, settings: TD3Settings) -> None:
        loss = self.actor_loss(batch, objective)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic.zero_grad(set_to_none=True)  # the actor's loss runs through the critic
        self.actor_opt.step()
        soft_update(self.target_actor, self.actor, settings.tau)
        soft_update(self.target_critic, self.critic, settings.tau)

    def recent_return(self, episodes: int = 5) -> float:
        """Mean return of the last finished episodes (nan before the first)."""
        recent = self.returns[-episodes:]
        return sum(recent) / len(recent) if recent else float("nan")

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_actor": self.target_actor.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "buffer": {**self.buffer.data, "size": self.buffer.size, "next": self.buffer.next},
            "generator": self.generator.get_state(),
            "env_generator": self.env.generator.get_state(),
            "env_state": self.env.state.clone() if hasattr(self.env, "state") else None,
            "env_position": getattr(self.env, "position", None),
            "env_steps": self.env.steps.clone(),
            "obs": self.obs,
            "episode_return": self.episode_return,
            "returns": list(self.returns),
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "target_actor", "target_critic"):
            getattr(self, name).load_state_dict(state[name])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        buffer = dict(state["buffer"])
        self.buffer.size, self.buffer.next = int(buffer.pop("size")), int(buffer.pop("next"))
        for key, value in buffer.items():
            self.buffer.data[key].copy_(value)
        restore_generator(self.generator, state["generator"])
        restore_generator(self.env.generator, state["env_generator"])
        if state["env_state"] is not None:
            self.env.state = state["env_state"].to(self.device)
        if state["env_position"] is not None:
            self.env.position = state["env_position"].to(self.device)
        self.env.steps.copy_(state["env_steps"])
        self.obs = state["obs"].to(self.device)
        self.episode_return = state["episode_return"]
        self.returns = list(state["returns"])


def train_agent(
    env_name: str,
    objective: nn.Module | None,
    *,
    seed: int,
    steps: int,
    warmup: int = 1000,
    batch_size: int = 128,
    policy_delay: int = 2,
    hidden=(64, 64),
    device=None,
) -> Agent:
    """Trains one fresh agent on a task of ``env_name`` with a frozen objective (DDPG's −Q
    when None) and TD3's critic; returns it (``agent.returns``: its finished episodes)."""
    agent = Agent(env_name, seed, hidden=hidden, device=device)
    settings = TD3Settings()
    for step in range(steps):
        learning = step >= warmup
        agent.collect(random=not learning)
        if not learning:
            continue
        batch = agent.sample(batch_size)
        agent.update_critic(batch, settings)
        if step % policy_delay == 0:
            agent.update_actor(batch, objective, settings)
    return agent


def meta_test(
    objective: nn.Module,
    env_name: str,
    *,
    seeds: int = 3,
    steps: int = 20_000,
    final_episodes: int = 5,
    device=None,
) -> dict:
    """Fresh agents trained from scratch on ``env_name``, with the frozen learned objective
    and with DDPG's objective, at equal samples and on the same tasks: the mean return of each
    agent's last ``final_episodes`` episodes, per seed, and how closely the learned objective's
    actor gradient points where DDPG's does (:func:`gradient_alignment`)."""
    results: dict[str, list[float]] = {"learned": [], "ddpg": []}
    alignment = []
    objective.eval()
    for name, obj in (("learned", objective), ("ddpg", None)):
        for s in range(seeds):
            agent = train_agent(env_name, obj, seed=10_000 + s, steps=steps, device=device)
            tail = agent.returns[-final_episodes:]
            results[name].append(sum(tail) / len(tail) if tail else float("nan"))
            if obj is not None and len(agent.buffer) > 0:
                alignment.append(gradient_alignment(obj, agent, batches=10))
    summary = {
        name: {**mean_and_stderr(values), "per_seed": values} for name, values in results.items()
    }
    return {
        "env": env_name,
        "seeds": seeds,
        "steps": steps,
        **summary,
        # cosine between the learned objective's actor gradient and DDPG's, at the end
        "alignment_with_ddpg": sum(alignment) / len(alignment) if alignment else None,
    }


def gradient_alignment(
    objective: nn.Module, agent: Agent, *, batches: int = 20, batch_size: int = 128
) -> float:
    """Mean cosine similarity between the actor gradients of ``objective`` and of DDPG's −Q
    on batches from ``agent``'s buffer: 1 means the learned objective moves the actor exactly
    as DDPG would (whatever its scale, to which Adam is blind)."""
    cosines = []
    params = agent.actor_params
    for _ in range(batches):
        batch = agent.sample(batch_size)
        scale = value_scale(batch, agent.critic)
        features = objective_features(agent.actor, params, agent.critic, batch, scale)
        learned = torch.autograd.grad(objective(features), list(params.values()), allow_unused=True)
        ddpg = torch.autograd.grad(
            ddpg_loss(agent.actor, params, agent.critic, batch, scale), list(params.values())
        )
        flat = [
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).flatten()
                    for g, p in zip(gs, params.values(), strict=True)
                ]
            )
            for gs in (learned, ddpg)
        ]
        cosines.append(F.cosine_similarity(flat[0], flat[1], dim=0).item())
    agent.actor.zero_grad(set_to_none=True)
    agent.critic.zero_grad(set_to_none=True)
    return sum(cosines) / len(cosines)
