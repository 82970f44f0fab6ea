"""RL² (Duan et al., 2016): a recurrent policy whose hidden state is the learning algorithm.

The policy is a GRU that reads, at every step, the observation, the previous action, the
previous reward and a flag saying that the previous step ended an episode. Its hidden state is
reset at the start of each *trial* (a new task) and kept across the episodes of the trial, so
whatever it learns about the task it must carry in that state. The GRU's weights are trained
with PPO across many trials in parallel, with advantages computed over whole trials (GAE):
the "slow" RL algorithm trains a "fast" one. Introduced in lesson 06
(``notebooks/06_rl2.ipynb``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcourse.envs import BernoulliBanditVectorEnv, TabularMDPVectorEnv
from mlcourse.options import check_config, option
from mlcourse.rl.ppo import ppo_clip_loss
from mlcourse.rl.returns import gae
from mlcourse.stats import mean_and_stderr

TASKS = ("bandit", "mdp")
VALUE_SCALE_RATE = 0.1  # how fast the value head's scale follows the spread of its targets
EVAL_SEED = 20_161_109  # held-out tasks: a generator no training run uses


@dataclass
class RL2Config:
    """Hyperparameters of an RL² run (each is a ``mlcourse train`` option)."""

    task: str = option("bandit", f"task family: one of {', '.join(TASKS)}", choices=TASKS)
    seed: int = option(0, "seed of the initialisation, the tasks and the action sampling")
    steps: int = option(
        2000, "PPO iterations (each: collect a batch of trials, then update)", min=1
    )
    num_arms: int = option(5, "bandit: arms (k)", min=1)
    num_pulls: int = option(10, "bandit: pulls per trial (n)", min=1)
    num_states: int = option(10, "MDP: states", min=1)
    num_actions: int = option(5, "MDP: actions", min=1)
    episode_length: int = option(10, "MDP: steps per episode", min=1)
    num_episodes: int = option(10, "MDP: episodes per trial (n)", min=1)
    trials_per_step: int = option(256, "trials collected in parallel per PPO iteration", min=1)
    hidden_size: int = option(256, "GRU units", min=1)
    lr: float = option(1e-3, "Adam step size", above=0)
    gamma: float = option(0.99, "discount factor", min=0, max=1)
    lam: float = option(0.3, "GAE λ", min=0, max=1)
    clip: float = option(0.2, "PPO clipping ε", above=0)
    epochs: int = option(4, "PPO epochs per batch", min=1)
    minibatches: int = option(4, "minibatches (of whole trials) per epoch", min=1)
    entropy_coef: float = option(0.01, "entropy bonus at the start", min=0)
    entropy_decay_steps: int = option(
        2000, "iterations over which the bonus decays linearly to 0", min=1
    )
    anneal_lr: bool = option(False, "also decay the step size linearly to a tenth over them")
    value_coef: float = option(0.5, "weight of the value loss", min=0)
    max_grad_norm: float = option(1.0, "gradient clipping (global norm)", above=0)
    expected_rewards: bool = option(
        False,
        "advantages and value targets use each step's expected reward (the pulled arm's "
        "probability, the MDP's reward mean: known to the trainer, never shown to the agent) "
        "instead of the sampled one: the same objective in expectation, with less variance",
    )
    privileged_critic: bool = option(
        False,
        "the value head also reads the task (arm probabilities, or reward means and "
        "transitions) and the fraction of the trial played; it is used in training only, so "
        "the agent (GRU and policy head) reads what it always reads",
    )
    bf16: bool = option(
        False,
        "run the GRU in bfloat16 (autocast) for rollouts and updates; weights, optimizer and "
        "losses stay float32 (faster where the hardware has bfloat16 arithmetic, e.g. CPUs "
        "with AVX-512 BF16: `mlcourse bench rl2-bf16` measures it)",
    )
    checkpoint_every: float = option(30.0, "seconds between checkpoints", min=0)
    log_every: int = option(10, "iterations between log lines", min=1)

    def __post_init__(self):
        check_config(self)
        if self.minibatches > self.trials_per_step:
            raise ValueError("minibatches cannot exceed trials_per_step")

    @property
    def obs_size(self) -> int:
        return 1 if self.task == "bandit" else self.num_states

    @property
    def action_size(self) -> int:
        return self.num_arms if self.task == "bandit" else self.num_actions

    @property
    def task_size(self) -> int:
        """Length of the task description a privileged critic reads (0 without one)."""
        if not self.privileged_critic:
            return 0
        if self.task == "bandit":
            return self.num_arms
        return self.num_states * self.num_actions * (1 + self.num_states)


# ---------------------------------------------------------------------------------------------
# The recurrent policy


def rl2_inputs(
    obs: Tensor,
    prev_action: Tensor,
    prev_reward: Tensor,
    prev_done: Tensor,
    *,
    num_states: int,
    num_actions: int,
) -> Tensor:
    """What the RL² policy reads at one step, for a batch of trials.

    ``[one_hot(obs), one_hot(prev_action), prev_reward, prev_done]``, where a ``prev_action``
    of −1 (the first step of a trial: nothing was done yet) gives an all-zero one-hot.

    Args:
        obs: ``(num_trials,)`` int64 states.
        prev_action: ``(num_trials,)`` int64, −1 at the start of a trial.
        prev_reward: ``(num_trials,)`` float, 0 at the start of a trial.
        prev_done: ``(num_trials,)`` bool or float: the previous step ended an episode.
        num_states: size of the observation one-hot.
        num_actions: size of the action one-hot.

    Returns:
        ``(num_trials, num_states + num_actions + 2)`` float32.

    Example:
        >>> x = rl2_inputs(torch.tensor([0]), torch.tensor([2]), torch.tensor([1.0]),
        ...                torch.tensor([False]), num_states=1, num_actions=3)
        >>> x.tolist()
        [[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]]
    """
    state = F.one_hot(obs.long(), num_states).float()
    action = F.one_hot(prev_action.long().clamp(min=0), num_actions).float()
    action = action * (prev_action >= 0).float()[:, None]
    return torch.cat([state, action, prev_reward.float()[:, None], prev_done.float()[:, None]], 1)


def task_features(task: dict) -> Tensor:
    """The description of each trial's task that a privileged critic reads.

    Args:
        task: what the batched environment's ``reset`` returned: ``probs``
            ``(N, num_arms)``, or ``reward_means`` ``(N, S, A)`` and ``transitions``
            ``(N, S, A, S)``.

    Returns:
        ``(N, num_arms)`` or ``(N, S * A * (1 + S))`` float32.

    Example:
        >>> task_features({"probs": torch.tensor([[0.25, 0.75]])}).tolist()
        [[0.25, 0.75]]
        >>> task = {"reward_means": torch.zeros(2, 10, 5), "transitions": torch.ones(2, 10, 5, 10)}
        >>> task_features(task).shape
        torch.Size([2, 550])
    """
    if "probs" in task:
        return task["probs"].float()
    means, transitions = task["reward_means"], task["transitions"]
    return torch.cat([means.flatten(1), transitions.flatten(1)], 1).float()


class PrivilegedCritic(nn.Module):
    """A value head that reads, besides the GRU's state, what the agent never sees: the task
    itself and how far into the trial it is (an asymmetric actor-critic; only training uses it).

    ``tanh(W_h h_t + W_τ τ + w_t t/T + b)`` followed by a linear output: one hidden layer on
    the concatenation ``[h_t, τ, t/T]``, computed without copying the task to every step.

    Args:
        hidden_size: GRU units.
        task_size: length of :func:`task_features`.
        width: hidden units of the critic.
    """

    def __init__(self, hidden_size: int, task_size: int, width: int = 256):
        super().__init__()
        self.from_features = nn.Linear(hidden_size, width)
        self.from_task = nn.Linear(task_size, width, bias=False)
        self.from_time = nn.Linear(1, width, bias=False)
        self.out = nn.Linear(width, 1)

    def forward(self, features: Tensor, task: Tensor, time: Tensor) -> Tensor:
        """``features`` ``(T, N, hidden_size)``, ``task`` ``(N, task_size)``, ``time``
        ``(T,)`` fractions of the trial played; returns ``(T, N, 1)``."""
        h = self.from_features(features) + self.from_task(task)[None]
        h = h + self.from_time(time[:, None].to(features.dtype))[:, None]
        return self.out(torch.tanh(h))


class RL2Policy(nn.Module):
    """A GRU over the RL² inputs, with a policy head and a value head.

    Args:
        num_states: observation one-hot size (1 for bandits).
        num_actions: number of actions.
        hidden_size: GRU units (256 in the course's runs).
        task_size: 0 for the usual value head (a linear map of the GRU's state); otherwise
            the value comes from a :class:`PrivilegedCritic` reading a task description of
            this length, which :meth:`forward` then needs as ``task`` and ``time``.

    Example:
        >>> policy = RL2Policy(num_states=1, num_actions=5, hidden_size=16)
        >>> logits, values, features, hidden = policy(torch.zeros(7, 3, policy.input_size))
        >>> logits.shape, values.shape, hidden.shape
        (torch.Size([7, 3, 5]), torch.Size([7, 3]), torch.Size([1, 3, 16]))
    """

    def __init__(
        self, num_states: int, num_actions: int, hidden_size: int = 256, task_size: int = 0
    ):
        super().__init__()
        self.num_states, self.num_actions, self.hidden_size = num_states, num_actions, hidden_size
        self.task_size = task_size
        self.input_size = num_states + num_actions + 2
        self.gru = nn.GRU(self.input_size, hidden_size)
        self.policy_head = nn.Linear(hidden_size, num_actions)
        if task_size:
            self.critic = PrivilegedCritic(hidden_size, task_size)
        else:
            self.value_head = nn.Linear(hidden_size, 1)
        with torch.no_grad():  # start close to uniform, as is usual for PPO
            self.policy_head.weight.mul_(0.01)
            self.policy_head.bias.zero_()
        # The value head predicts value / value_scale; training keeps value_scale near the
        # spread of the value targets, so the value loss (and its gradient) stays of order 1
        # whether a trial's return is 5 or 500.
        self.register_buffer("value_scale", torch.ones(()))
        # Compute the GRU and heads in bfloat16 (autocast); the weights stay float32. Training
        # sets it from RL2Config.bf16; loaded and evaluated policies compute in float32.
        self.bf16 = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs saved before the value normalisation existed had no value_scale: their value
        # head predicted values directly, which is value_scale = 1.
        state_dict.setdefault(prefix + "value_scale", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def initial_state(self, num_trials: int, device=None) -> Tensor:
        """The hidden state at the start of a trial: zeros, ``(1, num_trials, hidden_size)``."""
        dtype = self.gru.weight_hh_l0.dtype
        return torch.zeros(1, num_trials, self.hidden_size, device=device, dtype=dtype)

    @property
    def value_output(self) -> nn.Linear:
        """The last linear layer of the value computation (rescaled with ``value_scale``)."""
        return self.critic.out if self.task_size else self.value_head

    def forward(
        self,
        inputs: Tensor,
        hidden: Tensor | None = None,
        *,
        task: Tensor | None = None,
        time: Tensor | None = None,
    ):
        """Runs the GRU over ``inputs`` ``(T, num_trials, input_size)`` from ``hidden``
        (default: the start of a trial). A policy with a privileged critic also needs the
        ``task`` ``(num_trials, task_size)`` (:func:`task_features`) and the ``time``
        ``(T,)`` of each step as a fraction of the trial; the logits never depend on them.

        Returns:
            ``logits`` ``(T, num_trials, num_actions)``, ``values`` ``(T, num_trials)``,
            ``features`` ``(T, num_trials, hidden_size)`` (the hidden state after each step)
            and the final ``hidden`` ``(1, num_trials, hidden_size)``.
        """
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(
                f"inputs has shape {tuple(inputs.shape)}; expected (T, num_trials, "
                f"{self.input_size}) built with rl2_inputs"
            )
        if self.task_size and (
            task is None or time is None or task.shape != (inputs.shape[1], self.task_size)
        ):
            raise ValueError(
                f"this policy's critic reads the task: pass task=task_features(...) of shape "
                f"({inputs.shape[1]}, {self.task_size}) and time of shape ({inputs.shape[0]},)"
            )
        if hidden is None:
            hidden = self.initial_state(inputs.shape[1], inputs.device)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            features, hidden = self.gru(inputs, hidden)
            logits = self.policy_head(features)
            if self.task_size:
                values = self.critic(features, task, time)
            else:
                values = self.value_head(features)
        # What leaves has the weights' dtype either way (float32 under bfloat16 autocast), so
        # log-probabilities, ratios and losses never compute in bfloat16.
        dtype = self.gru.weight_hh_l0.dtype
        values = values.squeeze(-1).to(dtype) * self.value_scale
        return logits.to(dtype), values, features.to(dtype), hidden.to(dtype)


# ---------------------------------------------------------------------------------------------
# Trials


@dataclass
class Trials:
    """A batch of whole trials, time first.

    Attributes:
        inputs: ``(T, N, input_size)`` what the policy read.
        actions: ``(T, N)`` int64.
        logp: ``(T, N)`` log-probabilities of the actions when they were taken.
        values: ``(T, N)`` value estimates then.
        rewards: ``(T, N)``.
        expected_rewards: ``(T, N)`` the mean of each step's reward given the task, the state
            and the action (what ``expected_rewards`` training uses instead of ``rewards``).
        features: ``(T, N, hidden_size)`` hidden states (only with ``record_features``).
        task: the tasks of the batch (``probs``, or ``reward_means`` and ``transitions``).
    """

    inputs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    rewards: Tensor
    expected_rewards: Tensor
    features: Tensor | None = None
    task: dict = field(default_factory=dict)

    @property
    def returns(self) -> Tensor:
        """``(N,)`` total reward of each trial."""
        return self.rewards.sum(0)


def make_envs(config: RL2Config, num_trials: int, device=None):
    """The batched environment of ``config``'s task family, ``num_trials`` wide."""
    if config.task == "bandit":
        return BernoulliBanditVectorEnv(
            num_trials, config.num_arms, config.num_pulls, device=device
        )
    return TabularMDPVectorEnv(
        num_trials,
        config.num_states,
        config.num_actions,
        config.episode_length,
        config.num_episodes,
        device=device,
    )


def expected_reward(task: dict, obs: Tensor, action: Tensor) -> Tensor:
    """``(N,)`` mean reward of ``action`` in state ``obs`` for each trial's task (the arm's
    success probability, or the MDP's reward mean): what the reward is in expectation."""
    rows = torch.arange(action.shape[0], device=action.device)
    if "probs" in task:
        return task["probs"][rows, action]
    return task["reward_means"][rows, obs, action]


@torch.no_grad()
def run_trials(
    policy: RL2Policy,
    envs,
    *,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    record_features: bool = False,
    seed: int | None = None,
    options: dict | None = None,
) -> Trials:
    """Plays one trial in each of ``envs.num_envs`` new tasks, all at once.

    The hidden state starts at zero (a new trial) and is carried across every step of the
    trial, episode boundaries included.

    Args:
        policy: the RL² policy.
        envs: a batched environment (:func:`make_envs`); it is reset here.
        generator: for sampling actions (on the policy's device).
        greedy: take the most likely action instead of sampling.
        record_features: keep the hidden states (for probes).
        seed, options: passed to ``envs.reset`` (``options`` can fix the tasks).

    Returns:
        :class:`Trials`.
    """
    obs, task = envs.reset(seed=seed, options=options)
    n, device = envs.num_envs, envs.device
    length = (
        envs.num_pulls if hasattr(envs, "num_pulls") else envs.episode_length * envs.num_episodes
    )
    hidden = policy.initial_state(n, device)
    prev_action = torch.full((n,), -1, dtype=torch.long, device=device)
    prev_reward = torch.zeros(n, device=device)
    prev_done = torch.zeros(n, dtype=torch.bool, device=device)
    task_vector = task_features(task).to(device) if policy.task_size else None
    times = torch.arange(length, device=device) / length  # as ppo_update computes them
    inputs, actions, logps, values, rewards, means, features = [], [], [], [], [], [], []
    for t in range(length):
        x = rl2_inputs(
            obs,
            prev_action,
            prev_reward,
            prev_done,
            num_states=policy.num_states,
            num_actions=policy.num_actions,
        )
        logits, value, feature, hidden = policy(
            x[None], hidden, task=task_vector, time=times[t : t + 1]
        )
        logp_all = torch.log_softmax(logits[0], -1)
        if greedy:
            action = logp_all.argmax(-1)
        else:
            action = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
        means.append(expected_reward(task, obs, action))
        obs, reward, _, _, info = envs.step(action)
        inputs.append(x)
        actions.append(action)
        logps.append(logp_all.gather(1, action[:, None]).squeeze(1))
        values.append(value[0])
        rewards.append(reward)
        if record_features:
            features.append(feature[0])
        prev_action, prev_reward = action, reward
        prev_done = info.get("episode_end", torch.zeros_like(prev_done))
    return Trials(
        inputs=torch.stack(inputs),
        actions=torch.stack(actions),
        logp=torch.stack(logps),
        values=torch.stack(values),
        rewards=torch.stack(rewards),
        expected_rewards=torch.stack(means).float(),
        features=torch.stack(features) if record_features else None,
        task=task,
    )


# ---------------------------------------------------------------------------------------------
# PPO over whole trials


def ppo_update(
    policy: RL2Policy,
    optimizer: torch.optim.Optimizer,
    trials: Trials,
    config: RL2Config,
    *,
    entropy_coef: float,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Several epochs of PPO on one batch of trials; minibatches are sets of whole trials,
    replayed through the GRU from a zero hidden state (exactly as they were collected).

    Returns:
        Averages over the minibatch updates: ``loss``, ``policy_loss``, ``value_loss``,
        ``entropy``, ``approx_kl``.
    """
    rewards = trials.expected_rewards if config.expected_rewards else trials.rewards
    advantages = gae(rewards, trials.values, gamma=config.gamma, lam=config.lam)
    targets = advantages + trials.values
    length = trials.actions.shape[0]
    task = task_features(trials.task) if policy.task_size else None
    time = torch.arange(length, device=trials.actions.device) / length
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    n = trials.actions.shape[1]
    size = math.ceil(n / config.minibatches)
    totals: dict[str, float] = {}
    updates = 0
    for _ in range(config.epochs):
        order = torch.randperm(
            n, generator=generator, device=generator.device if generator else None
        )
        for start in range(0, n, size):
            idx = order[start : start + size].to(trials.actions.device)
            critic_task = task[idx] if task is not None else None
            logits, values, _, _ = policy(trials.inputs[:, idx], task=critic_task, time=time)
            logp_all = torch.log_softmax(logits, -1)
            logp = logp_all.gather(2, trials.actions[:, idx, None]).squeeze(2)
            entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
            policy_loss = ppo_clip_loss(logp, trials.logp[:, idx], advantages[:, idx], config.clip)
            scale = policy.value_scale
            value_loss = F.mse_loss(values / scale, targets[:, idx] / scale)
            loss = policy_loss + config.value_coef * value_loss - entropy_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                approx_kl = (trials.logp[:, idx] - logp).mean().item()
            for key, value in (
                ("loss", loss.item()),
                ("policy_loss", policy_loss.item()),
                ("value_loss", value_loss.item()),
                ("entropy", entropy.item()),
                ("approx_kl", approx_kl),
            ):
                totals[key] = totals.get(key, 0.0) + value
            updates += 1
    with torch.no_grad():  # follow the spread of the value targets, slowly, ...
        old = policy.value_scale.clone()
        spread = targets.std().clamp(min=1e-3)
        policy.value_scale.mul_(1 - VALUE_SCALE_RATE).add_(VALUE_SCALE_RATE * spread)
        # ... rescaling the head so that the values it predicts do not jump (as in PopArt).
        policy.value_output.weight.mul_(old / policy.value_scale)
        policy.value_output.bias.mul_(old / policy.value_scale)
    return {k: v / updates for k, v in totals.items()}


def evaluate(
    policy: RL2Policy,
    config: RL2Config,
    *,
    num_trials: int = 1000,
    seed: int = EVAL_SEED,
    greedy: bool = False,
    device=None,
) -> dict[str, float]:
    """Mean and standard error of the trial return on ``num_trials`` held-out tasks.

    The tasks come from one reset of the batched environment with ``seed`` (the same tasks as
    :func:`mlcourse.rl.bandits.bandit_returns` and :func:`mlcourse.rl.mdps.mdp_returns` with
    that seed), and the action sampling from a generator seeded with ``seed + 1``. ``config``
    sets the task family and its sizes, which may differ from training (e.g. more pulls).
    The policy computes in its weights' precision here, even if it was trained in bfloat16.
    """
    device = torch.device(device) if device is not None else next(policy.parameters()).device
    if config.action_size != policy.num_actions or config.obs_size != policy.num_states:
        raise ValueError(
            f"this policy was trained with {policy.num_actions} actions and {policy.num_states} "
            f"observations; the evaluation asks for {config.action_size} and {config.obs_size}. "
            "Evaluate with the task sizes the policy was trained on (the number of pulls or "
            "episodes may differ), or train a policy for these sizes."
        )
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    envs = make_envs(config, num_trials, device)
    bf16, policy.bf16 = policy.bf16, False  # figures are always computed in full precision
    try:
        trials = run_trials(policy, envs, generator=generator, greedy=greedy, seed=seed)
    finally:
        policy.bf16 = bf16
    return mean_and_stderr(trials.returns)
