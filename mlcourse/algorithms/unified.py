"""One outer loop for meta-learning and meta-RL. Introduced in lesson 09
(``notebooks/09_relation.ipynb``).

Meta-learning and meta-RL differ only in what a *task* is and in what the inner loop does
with it. This module makes that literal:

- a **task family** samples a batch of tasks: :class:`SineFamily` (supervised: support and
  query tensors) and :class:`BanditFamily` (RL: the arm probabilities of k-armed Bernoulli
  bandits, whose rewards are only sampled when an arm is pulled);
- a **meta-learner** turns a batch of tasks into one differentiable number,
  ``meta_loss(params, tasks, generator)``, and reports ``evaluate(params, tasks, generator)``;
- :func:`outer_loop`, written once, runs Adam on the learner's ``params`` for any pair.

The learners reuse the course's implementations:

- :class:`MAMLSine` is :func:`mlcourse.algorithms.maml.meta_loss` (lesson 02);
- :class:`MAMLBandit` is MAML-RL (lesson 07) on a softmax policy, with a DiCE meta-gradient;
- :class:`BlackBoxBandit` is RL² (lesson 06: :class:`mlcourse.algorithms.rl2.RL2Policy`,
  :func:`mlcourse.algorithms.rl2.run_trials`), trained by REINFORCE over whole trials;
- :class:`BlackBoxSine` is its supervised twin, a GRU that reads the support pairs and
  predicts the query;
- :class:`ProtoNetCharacters` is lesson 04's Prototypical Network, the metric-based method,
  which has no natural RL form.

:func:`compare` trains and measures one pair; :func:`format_table` prints the rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mlcourse.algorithms import fewshot, maml
from mlcourse.algorithms.rl2 import RL2Policy, run_trials
from mlcourse.envs import BernoulliBanditVectorEnv, bernoulli_rewards, draw_bandits
from mlcourse.models import MLP, Conv4
from mlcourse.profiling import saved_tensor_bytes
from mlcourse.rl.bandits import bandit_baselines
from mlcourse.rl.dice import magic_box, reinforce_surrogate
from mlcourse.rl.returns import discounted_returns
from mlcourse.tasks import ProceduralCharacters, Sinusoid, TaskBatch

Params = dict[str, Tensor]

__all__ = [
    "BanditFamily",
    "BanditTasks",
    "BlackBoxBandit",
    "BlackBoxRegressor",
    "BlackBoxSine",
    "CharactersFamily",
    "MAMLBandit",
    "MAMLSine",
    "MetaLearner",
    "ProtoNetCharacters",
    "Run",
    "SineFamily",
    "SoftmaxBandit",
    "bandit_inner_step",
    "bandit_baseline_rows",
    "bandit_maml_objective",
    "compare",
    "format_table",
    "held_out_report",
    "sine_baseline_rows",
    "outer_loop",
    "outer_step",
]


# ---------------------------------------------------------------------------------------------
# Task families


@dataclass(frozen=True)
class SineFamily:
    """Sinusoid regression (lesson 01) as a task family of the outer loop.

    Args:
        k_support: support points per task.
        k_query: query points per task.
        sinusoid: the task distribution (the MAML paper's by default).

    Example:
        >>> tasks = SineFamily().sample(4, torch.Generator().manual_seed(0))
        >>> tuple(tasks.x_support.shape), tuple(tasks.y_query.shape)
        ((4, 10, 1), (4, 10, 1))
    """

    k_support: int = 10
    k_query: int = 10
    sinusoid: Sinusoid = field(default_factory=Sinusoid)
    kind = "supervised"

    def sample(self, meta_batch_size: int, generator=None, device=None) -> TaskBatch:
        """``meta_batch_size`` tasks: a :class:`mlcourse.tasks.TaskBatch` with tensors
        ``(meta_batch_size, k, 1)`` on ``device``."""
        return self.sinusoid.sample(
            meta_batch_size, self.k_support, self.k_query, generator=generator, device=device
        )


@dataclass
class BanditTasks:
    """A batch of Bernoulli bandits.

    Attributes:
        probs: ``(num_tasks, num_arms)`` success probability of each arm; the learner never
            reads it directly, only through rewards sampled by :meth:`BanditFamily.pull`.
        num_pulls: n, the pulls of one trial.
    """

    probs: Tensor
    num_pulls: int

    @property
    def num_tasks(self) -> int:
        return self.probs.shape[0]


@dataclass(frozen=True)
class BanditFamily:
    """k-armed Bernoulli bandits with U[0, 1] arms (lesson 05), as a task family: the bandits
    and rewards of :class:`mlcourse.envs.BernoulliBanditVectorEnv`, drawn by the same functions
    (:func:`mlcourse.envs.draw_bandits`, :func:`mlcourse.envs.bernoulli_rewards`).

    Args:
        num_arms: k.
        num_pulls: n, pulls per trial.

    Example:
        >>> family = BanditFamily(num_arms=3)
        >>> tasks = family.sample(2, torch.Generator().manual_seed(0))
        >>> tasks.probs.shape
        torch.Size([2, 3])
        >>> family.pull(tasks, torch.tensor([[0, 1], [2, 2]])).shape
        torch.Size([2, 2])
    """

    num_arms: int = 5
    num_pulls: int = 10
    kind = "rl"

    def __post_init__(self):
        for name in ("num_arms", "num_pulls"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def sample(self, meta_batch_size: int, generator=None, device=None) -> BanditTasks:
        """``meta_batch_size`` bandits, each arm's probability drawn U[0, 1]."""
        if meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be at least 1, got {meta_batch_size}")
        probs = draw_bandits(meta_batch_size, self.num_arms, generator, device)
        return BanditTasks(probs=probs, num_pulls=self.num_pulls)

    @staticmethod
    def pull(tasks: BanditTasks, actions: Tensor, generator=None) -> Tensor:
        """Samples the rewards of pulling ``actions``.

        Args:
            tasks: the bandits.
            actions: ``(num_tasks, m)`` int64 arms, ``m`` pulls of each bandit.
            generator: optional seeded generator (any device).

        Returns:
            ``(num_tasks, m)`` rewards in {0, 1}, in the dtype of ``tasks.probs``.
        """
        if actions.dim() != 2 or actions.shape[0] != tasks.num_tasks:
            raise ValueError(
                f"actions has shape {tuple(actions.shape)}; expected (num_tasks={tasks.num_tasks}"
                ", m): one row of pulled arms per bandit"
            )
        return bernoulli_rewards(tasks.probs.gather(1, actions), generator)


@dataclass(frozen=True)
class CharactersFamily:
    """N-way K-shot episodes of procedural characters (lesson 04), as a task family.

    Args:
        n_way: classes per episode.
        k_shot: support images per class.
        k_query: query images per class.
        split: ``"train"``, ``"val"`` or ``"test"`` classes.
    """

    n_way: int = 5
    k_shot: int = 5
    k_query: int = 5
    split: str = "train"
    characters: ProceduralCharacters = field(default_factory=ProceduralCharacters)
    kind = "supervised"

    def sample(self, meta_batch_size: int, generator=None, device=None) -> TaskBatch:
        """Episodes with ``x_support: (meta_batch_size, n_way * k_shot, 1, 28, 28)``."""
        return self.characters.sample(
            meta_batch_size,
            self.n_way,
            self.k_shot,
            self.k_query,
            split=self.split,
            generator=generator,
            device=device,
        )


def _rand(*shape, generator=None, device=None, dtype=torch.float32) -> Tensor:
    """Uniform numbers from ``generator`` on its own device, then moved to ``device``: a
    seeded CPU generator gives the same numbers on every device."""
    draw_device = generator.device if generator is not None else device
    u = torch.rand(*shape, generator=generator, device=draw_device, dtype=dtype)
    return u.to(device) if device is not None else u


def _seed_from(generator: torch.Generator | None) -> int:
    """A fresh seed drawn from ``generator`` (for libraries that take an int seed)."""
    return int(torch.randint(2**31 - 1, (), generator=generator))


# ---------------------------------------------------------------------------------------------
# The meta-learner interface and the one outer loop


class MetaLearner(Protocol):
    """What :func:`outer_loop` needs from a meta-learner.

    ``kind`` is ``"supervised"`` or ``"rl"``: the task families the learner accepts.
    """

    kind: str
    name: str

    def init_params(self, generator: torch.Generator, device=None) -> Params:
        """Fresh meta-parameters, leaf tensors requiring grad, on ``device``."""
        ...

    def meta_loss(self, params: Params, tasks, generator: torch.Generator) -> Tensor:
        """A differentiable scalar: the loss after adaptation, averaged over ``tasks``."""
        ...

    def evaluate(self, params: Params, tasks, generator: torch.Generator) -> dict:
        """``{"curve": {amount of task data: quality}, "final": quality, "metric": str}``."""
        ...

    def network(self) -> nn.Module:
        """A module whose parameters have the names and shapes of ``params`` (what a trained
        run's ``network()`` loads them into); only ``mlcourse train`` runs need it."""
        ...


@dataclass
class Run:
    """What :func:`outer_loop` returns.

    Attributes:
        params: the meta-trained parameters.
        losses: the meta-loss of every step, as floats.
        seconds: wall-clock time of the loop.
    """

    params: Params
    losses: list[float]
    seconds: float

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())


def outer_step(
    learner: MetaLearner,
    params: Params,
    optimizer: torch.optim.Optimizer,
    tasks,
    generator: torch.Generator,
    *,
    max_grad_norm: float | None = None,
) -> Tensor:
    """One step of the outer loop: the meta-loss of ``tasks``, its gradient, one optimizer step.

    Args:
        learner: any :class:`MetaLearner`.
        params: its meta-parameters (the tensors ``optimizer`` updates).
        optimizer: e.g. Adam on ``params.values()``.
        tasks: a batch from the learner's task family.
        generator: randomness of the inner loop (sampled pulls, actions).
        max_grad_norm: clip the meta-gradient to this global norm (None: no clipping).

    Returns:
        The meta-loss before the step, detached.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
    optimizer.step()
    return loss.detach()


def outer_loop(
    learner: MetaLearner,
    family,
    *,
    steps: int,
    meta_batch_size: int,
    meta_lr: float,
    generator: torch.Generator,
    params: Params | None = None,
    device=None,
    max_grad_norm: float | None = None,
    log_every: int = 0,
    log: Callable[[str], None] = print,
) -> Run:
    """The outer loop, the same for every learner and task family.

    Each step samples ``meta_batch_size`` tasks from ``family``, and calls :func:`outer_step`
    (Adam on the learner's meta-loss). Nothing in it knows whether the tasks are regression
    problems or bandits: that lives in the family and in the learner's inner loop. The step is
    that of :class:`mlcourse.experiments.unified.OuterLoopLearner`, the learner that
    ``mlcourse train unified-ROW`` trains with checkpoints: this loop runs it in memory.

    Args:
        learner: a :class:`MetaLearner` whose ``kind`` matches ``family.kind``.
        family: samples tasks: ``family.sample(meta_batch_size, generator, device)``.
        steps: outer iterations.
        meta_batch_size: tasks per iteration.
        meta_lr: Adam's step size.
        generator: seeded CPU ``torch.Generator``: initial parameters, tasks, inner sampling.
        params: parameters to continue from (default: ``learner.init_params``).
        device: where parameters and tasks live (default: that of ``params``, or CPU).
        max_grad_norm: optional clipping of the meta-gradient.
        log_every: print the mean loss every this many steps (0: silent).
        log: where log lines go.

    Returns:
        A :class:`Run`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> run = outer_loop(MAMLBandit(), BanditFamily(), steps=3, meta_batch_size=8,
        ...                  meta_lr=0.1, generator=g)
        >>> len(run.losses), sorted(run.params)
        (3, ['log_inner_lr', 'logits'])
    """
    # the experiment layer imports this module, so its learner is imported here
    from mlcourse.experiments.unified import OuterLoopLearner

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    runner = OuterLoopLearner.of(
        learner,
        family,
        meta_batch_size=meta_batch_size,
        meta_lr=meta_lr,
        generator=generator,
        params=params,
        device=device,
        max_grad_norm=max_grad_norm,
    )
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        losses.append(runner.step(step).cpu().item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(
                f"the meta-loss of {learner.name} became {losses[-1]} at step {step}: lower "
                "meta_lr or set max_grad_norm"
            )
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            log(f"{learner.name} step {step + 1}: meta-loss {sum(recent) / len(recent):.4f}")
    return Run(params=runner.params, losses=losses, seconds=time.perf_counter() - start)


def _module_params(module: nn.Module, generator, device) -> Params:
    """Re-initialises ``module`` from a seed drawn from ``generator``, moves it to ``device``
    and returns its parameters (leaf tensors, requiring grad) as a dict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_from(generator))
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    module.to(device if device is not None else "cpu")
    return {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}


def _check_kind(tasks, expected: type, learner: str) -> None:
    if not isinstance(tasks, expected):
        raise TypeError(
            f"{learner} expects {expected.__name__} tasks, got {type(tasks).__name__}: sample "
            "them from the matching family"
        )


# ---------------------------------------------------------------------------------------------
# Optimisation-based: MAML on sinusoids


@dataclass
class MAMLSine:
    """MAML on sinusoids: :func:`mlcourse.algorithms.maml.meta_loss` on the MAML paper's 1-40-40-1
    MLP.

    Args:
        inner_lr: inner-loop SGD step size.
        num_inner_steps: inner steps in meta-training.
        eval_inner_steps: inner steps when evaluating (default: as in training; the paper
            fine-tunes for up to 10, which from one support point can diverge).
        shots: support sizes of the adaptation curve.
    """

    inner_lr: float = 0.01
    num_inner_steps: int = 1
    eval_inner_steps: int = 1
    shots: tuple[int, ...] = (1, 5, 10)
    kind = "supervised"
    name = "MAML"
    model: nn.Module = field(default_factory=MLP, repr=False)

    def init_params(self, generator, device=None) -> Params:
        return _module_params(self.model, generator, device)

    def network(self) -> nn.Module:
        return self.model

    def meta_loss(self, params, tasks, generator=None) -> Tensor:
        _check_kind(tasks, TaskBatch, self.name)
        return maml.meta_loss(
            self.model,
            params,
            tasks,
            loss_fn=F.mse_loss,
            inner_lr=self.inner_lr,
            num_inner_steps=self.num_inner_steps,
        )

    def query_mse(self, params, tasks, k_support: int) -> Tensor:
        """``(num_tasks,)`` query MSE after ``eval_inner_steps`` steps on the first
        ``k_support`` support points."""
        adapted = maml.adapt_batch(
            self.model,
            params,
            tasks.x_support[:, :k_support],
            tasks.y_support[:, :k_support],
            loss_fn=F.mse_loss,
            inner_lr=self.inner_lr,
            num_inner_steps=self.eval_inner_steps,
        )
        with torch.no_grad():
            return maml.query_losses(
                self.model, adapted, tasks.x_query, tasks.y_query, loss_fn=F.mse_loss
            )

    def evaluate(self, params, tasks, generator=None) -> dict:
        curve = {k: self.query_mse(params, tasks, k).mean().item() for k in self.shots}
        return _report(curve, tasks.x_support.shape[1], "query MSE", "support points")


def _report(curve: dict, final_at: int, metric: str, unit: str) -> dict:
    return {"curve": curve, "final": curve[final_at], "metric": metric, "unit": unit}


# ---------------------------------------------------------------------------------------------
# Optimisation-based: MAML on bandits


def bandit_inner_step(
    logits: Tensor, actions: Tensor, rewards: Tensor, inner_lr, *, baseline: float = 0.5
) -> Tensor:
    """One policy-gradient ascent step of a softmax bandit policy, for each task.

    ``θ'_t = θ + α ∇_θ (1/m) Σ_i log π_θ(a_ti) (r_ti − b)``: the score-function estimate of
    ∇E[r] from task t's own ``m`` pulls, rewards centred on ``baseline`` (0.5, the prior mean
    of an arm, so that a failure pushes probability *away* from an arm even with m = 1). The
    result is differentiable in ``logits`` and ``inner_lr`` (``create_graph``): the
    meta-gradient through it has its second-order terms.

    Args:
        logits: ``(num_arms,)`` the meta-learned initial logits θ.
        actions: ``(num_tasks, m)`` int64 arms pulled.
        rewards: ``(num_tasks, m)`` their rewards (constants).
        inner_lr: α, a float or a scalar tensor.
        baseline: b.

    Returns:
        ``(num_tasks, num_arms)`` adapted logits.

    Example:
        >>> new = bandit_inner_step(torch.zeros(3), torch.tensor([[0]]), torch.tensor([[1.0]]),
        ...                         1.0)
        >>> [round(v, 3) for v in new[0].tolist()]
        [0.333, -0.167, -0.167]
    """
    if logits.dim() != 1:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected (num_arms,)")
    if actions.dim() != 2 or actions.shape != rewards.shape:
        raise ValueError(
            f"actions {tuple(actions.shape)} and rewards {tuple(rewards.shape)} must both be "
            "(num_tasks, m)"
        )
    differentiable = torch.is_grad_enabled()  # under no_grad (evaluation) build no graph
    with torch.enable_grad():
        batched = logits.expand(actions.shape[0], -1)  # a copy of θ per task: per-task grads
        if not (differentiable and batched.requires_grad):
            batched = batched.detach().requires_grad_()
        logp = torch.log_softmax(batched, -1).gather(1, actions)  # (T, m)
        surrogate = (logp * (rewards.detach() - baseline)).mean(1).sum()
        (grads,) = torch.autograd.grad(surrogate, batched, create_graph=differentiable)
    return batched + inner_lr * grads


def bandit_maml_objective(
    logits: Tensor, inner_lr, probs: Tensor, actions: Tensor, rewards: Tensor, **kwargs
) -> Tensor:
    """DiCE estimate of MAML's meta-objective on bandits, one value per task.

    The meta-objective is ``F(θ) = E_{a ~ π_θ, r}[R(θ')]`` with ``θ'`` from
    :func:`bandit_inner_step` and ``R(θ') = Σ_a softmax(θ')_a p_a``, the expected reward of one
    pull of the adapted policy. The outer reward is that exact expectation (we know ``p`` at
    meta-training time; the adapted policy never sees it), so only the inner pulls are
    sampled. Their distribution depends on θ, so the estimate is
    ``☐(Σ_i log π_θ(a_i)) (R(θ') − b) + b`` with DiCE's magic box and ``b = R(θ)`` (a
    baseline, detached): it *evaluates* to ``R(θ')`` and its gradient,
    ``∇R(θ'(θ, a)) + (R(θ') − b) ∇ log P_θ(a)``, is an unbiased estimate of ``∇F`` (tested
    against the exact gradient over every outcome in float64).

    Args:
        logits: ``(num_arms,)`` θ.
        inner_lr: α.
        probs: ``(num_tasks, num_arms)`` the bandits.
        actions, rewards: ``(num_tasks, m)`` the inner pulls, drawn from ``softmax(logits)``.
        **kwargs: passed to :func:`bandit_inner_step` (``baseline``).

    Returns:
        ``(num_tasks,)`` values equal to ``R(θ')``, carrying the meta-gradient.
    """
    adapted = bandit_inner_step(logits, actions, rewards, inner_lr, **kwargs)
    after = (torch.softmax(adapted, -1) * probs).sum(-1)
    before = (torch.softmax(logits, -1) * probs).sum(-1).detach()
    logp = torch.log_softmax(logits, -1)[actions].sum(-1)  # log P_θ(a), (T,)
    return magic_box(logp) * (after - before) + before


def _sample_arms(logits: Tensor, num_tasks: int, m: int, generator) -> Tensor:
    """``(num_tasks, m)`` arms drawn from ``softmax(logits)`` by inverting the CDF."""
    cdf = torch.softmax(logits.detach(), -1).cumsum(-1)
    u = _rand(num_tasks, m, generator=generator, device=logits.device, dtype=logits.dtype)
    return torch.searchsorted(cdf, u * cdf[-1]).clamp(max=logits.shape[0] - 1)


class SoftmaxBandit(nn.Module):
    """:class:`MAMLBandit`'s meta-parameters as a module: ``logits`` θ of the initial softmax
    policy over the arms and ``log_inner_lr``, log α. ``forward()`` gives the policy's arm
    probabilities.

    Example:
        >>> SoftmaxBandit(num_arms=4)().tolist()
        [0.25, 0.25, 0.25, 0.25]
    """

    def __init__(self, num_arms: int = 5, inner_lr: float = 1.0):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_arms))
        self.log_inner_lr = nn.Parameter(torch.tensor(math.log(inner_lr)))

    def forward(self) -> Tensor:
        return torch.softmax(self.logits, -1)


@dataclass
class MAMLBandit:
    """MAML on Bernoulli bandits: a softmax policy over the arms, adapted by one
    policy-gradient step on ``support_pulls`` pulls of each bandit (see
    :func:`bandit_maml_objective`).

    Arms are exchangeable under the task distribution, so equal initial logits are a
    stationary point of the objective (not always its best: at small inner steps, exploring
    fewer arms pays more; lesson 09 computes it). The inner step size matters most, so it is
    meta-learned too (``log_inner_lr``, as Meta-SGD does per parameter).

    Args:
        num_arms: k.
        support_pulls: m, pulls of the pre-update policy in a trial.
        inner_lr: the initial inner step size α.
        pulls: amounts of experience at which the adaptation curve is measured.
    """

    num_arms: int = 5
    support_pulls: int = 5
    inner_lr: float = 1.0
    pulls: tuple[int, ...] = (1, 5, 9)
    kind = "rl"
    name = "MAML"

    def init_params(self, generator=None, device=None) -> Params:
        logits = torch.zeros(self.num_arms, device=device)
        log_lr = torch.tensor(math.log(self.inner_lr), device=device)
        return {"logits": logits.requires_grad_(), "log_inner_lr": log_lr.requires_grad_()}

    def network(self) -> nn.Module:
        return SoftmaxBandit(self.num_arms, self.inner_lr)

    def _objective(self, params, tasks, generator, m: int) -> Tensor:
        _check_kind(tasks, BanditTasks, self.name)
        if tasks.probs.shape[1] != params["logits"].shape[0]:
            raise ValueError(
                f"the bandits have {tasks.probs.shape[1]} arms, the policy "
                f"{params['logits'].shape[0]}"
            )
        actions = _sample_arms(params["logits"], tasks.num_tasks, m, generator)
        rewards = BanditFamily.pull(tasks, actions, generator)
        lr = params["log_inner_lr"].exp()
        return bandit_maml_objective(params["logits"], lr, tasks.probs, actions, rewards)

    def meta_loss(self, params, tasks, generator=None) -> Tensor:
        """Minus the mean expected reward per pull of the adapted policies."""
        return -self._objective(params, tasks, generator, self.support_pulls).mean()

    def evaluate(self, params, tasks, generator=None) -> dict:
        """Curve: expected reward of the next pull after adapting on ``t`` pulls. Final: mean
        expected reward per pull over a trial of ``num_pulls``, the first ``support_pulls``
        from the initial policy, the rest from the adapted one."""
        m, n = self.support_pulls, tasks.num_pulls
        if not 0 < m < n:
            raise ValueError(
                f"support_pulls = {m} must lie between 0 and the trial's {n} pulls (exclusive): "
                "MAML explores with its initial policy for m pulls, then exploits the rest"
            )
        with torch.no_grad():
            curve = {
                t: self._objective(params, tasks, generator, t).mean().item() for t in self.pulls
            }
            before = (torch.softmax(params["logits"], -1) * tasks.probs).sum(-1).mean().item()
            after = self._objective(params, tasks, generator, m).mean().item()
        return {
            **_report(curve, self.pulls[0], "reward per pull", "pulls"),
            "final": (m * before + (n - m) * after) / n,
        }


# ---------------------------------------------------------------------------------------------
# Black-box: RL² on bandits


class _WithParams(nn.Module):
    """``module`` run with the given ``params`` (``functional_call``) wherever a module is
    expected, e.g. by :func:`mlcourse.algorithms.rl2.run_trials` or
    :func:`mlcourse.algorithms.fewshot.protonet_loss`; other attributes are read from ``module``."""

    def __init__(self, module: nn.Module, params: Params):
        super().__init__()
        self.module, self.params = module, params

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def forward(self, *args, **kwargs):
        return functional_call(self.module, self.params, args, kwargs)


@dataclass
class BlackBoxBandit:
    """RL² on bandits: lesson 06's GRU policy reads (previous action, previous reward) and its
    hidden state, reset at the start of every trial, is the learner. Trained here by REINFORCE
    over whole trials (returns-to-go, minus their mean over the batch at each step as a
    baseline, scaled to unit spread) rather than lesson 06's PPO, so that one gradient
    step is one outer step.

    Args:
        num_arms: k.
        hidden_size: GRU units.
        entropy_coef: weight of an entropy bonus (keeps early exploration).
        pulls: pulls of experience at which the adaptation curve is measured.
    """

    num_arms: int = 5
    hidden_size: int = 64
    entropy_coef: float = 0.01
    pulls: tuple[int, ...] = (1, 5, 9)
    kind = "rl"
    name = "black-box (RL²)"
    policy: RL2Policy | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.policy is None:
            self.policy = RL2Policy(
                num_states=1, num_actions=self.num_arms, hidden_size=self.hidden_size
            )

    def init_params(self, generator, device=None) -> Params:
        return _module_params(self.policy, generator, device)

    def network(self) -> nn.Module:
        return self.policy

    def play(self, params, tasks, generator, *, greedy: bool = False):
        """One trial in each bandit of ``tasks`` (hidden states start at zero), no gradient;
        returns :class:`mlcourse.algorithms.rl2.Trials`."""
        _check_kind(tasks, BanditTasks, self.name)
        n, device = tasks.num_tasks, tasks.probs.device
        if tasks.probs.shape[1] != self.num_arms:
            raise ValueError(
                f"the bandits have {tasks.probs.shape[1]} arms, the policy {self.num_arms}"
            )
        envs = BernoulliBanditVectorEnv(n, self.num_arms, tasks.num_pulls, device=device)
        actions_gen = torch.Generator(device=device).manual_seed(_seed_from(generator))
        return run_trials(
            _WithParams(self.policy, params),
            envs,
            generator=actions_gen,
            greedy=greedy,
            seed=_seed_from(generator),
            options={"probs": tasks.probs},
        )

    def meta_loss(self, params, tasks, generator=None) -> Tensor:
        """REINFORCE over whole trials: the trials are replayed through the GRU with gradient."""
        trials = self.play(params, tasks, generator)
        logits = functional_call(self.policy, params, (trials.inputs,))[0]  # (n, N, k)
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(2, trials.actions[..., None]).squeeze(2)
        returns = discounted_returns(trials.rewards, 1.0)
        advantages = returns - returns.mean(1, keepdim=True)
        advantages = advantages / (advantages.std() + 1e-8)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        return (
            reinforce_surrogate(logp, advantages) / trials.rewards.shape[0]
            - self.entropy_coef * entropy
        )

    def evaluate(self, params, tasks, generator=None) -> dict:
        """Curve: expected reward of the pull made after ``t`` pulls of experience. Final: mean
        expected reward per pull over the trial."""
        with torch.no_grad():
            trials = self.play(params, tasks, generator)
            logits = functional_call(self.policy, params, (trials.inputs,))[0]
            expected = (torch.softmax(logits, -1) * tasks.probs.to(logits.dtype)).sum(-1)  # (n, N)
            per_pull = expected.mean(1)
        curve = {t: per_pull[t].item() for t in self.pulls if t < per_pull.shape[0]}
        out = _report(curve, self.pulls[0], "reward per pull", "pulls")
        return {**out, "final": per_pull.mean().item()}


# ---------------------------------------------------------------------------------------------
# Black-box: a recurrent regressor on sinusoids


class BlackBoxRegressor(nn.Module):
    """A GRU reads the support pairs (x, y); from its state after each one, an MLP predicts y
    at any query x. Supervised RL²: the hidden state is the learner.

    Inputs are divided by ``scale`` (5, the range of the sinusoids' x and amplitude).

    Args:
        hidden_size: GRU units.
        head_sizes: hidden widths of the head MLP ``[h, x] -> y``.
        scale: input normalisation.

    Example:
        >>> model = BlackBoxRegressor(hidden_size=8)
        >>> xs, ys, xq = torch.zeros(3, 4, 1), torch.zeros(3, 4, 1), torch.zeros(3, 6, 1)
        >>> model(xs, ys, xq).shape, model(xs, ys, xq, all_prefixes=True).shape
        (torch.Size([3, 6, 1]), torch.Size([3, 4, 6, 1]))
    """

    def __init__(
        self, hidden_size: int = 64, head_sizes: Sequence[int] = (64, 64), scale: float = 5.0
    ):
        super().__init__()
        self.scale = scale
        self.gru = nn.GRU(2, hidden_size, batch_first=True)
        self.head = MLP(hidden_size + 1, 1, hidden_sizes=head_sizes)

    def encode(self, x_support: Tensor, y_support: Tensor) -> Tensor:
        """``(T, K, hidden_size)``: the state after each support pair, from a zero state."""
        _check_pairs(x_support, y_support)
        inputs = torch.cat([x_support, y_support], -1) / self.scale
        return self.gru(inputs)[0]

    def decode(self, state: Tensor, x_query: Tensor) -> Tensor:
        """Predictions ``(T, Q, 1)`` from states ``(T, H)`` (or ``(T, K, Q, 1)`` from
        ``(T, K, H)``) at query inputs ``(T, Q, 1)``."""
        if state.dim() == 3:
            x_query = x_query[:, None].expand(-1, state.shape[1], -1, -1)
        h = state[..., None, :].expand(*x_query.shape[:-1], state.shape[-1])
        return self.head(torch.cat([h, x_query / self.scale], -1))

    def forward(
        self, x_support: Tensor, y_support: Tensor, x_query: Tensor, all_prefixes: bool = False
    ) -> Tensor:
        """``(T, Q, 1)`` predictions at ``x_query`` after reading the whole support set; with
        ``all_prefixes``, ``(T, K, Q, 1)`` where ``[:, k]`` is the prediction after the first
        ``k + 1`` pairs."""
        states = self.encode(x_support, y_support)
        return self.decode(states if all_prefixes else states[:, -1], x_query)


def _check_pairs(x_support: Tensor, y_support: Tensor) -> None:
    if x_support.dim() != 3 or x_support.shape != y_support.shape or x_support.shape[-1] != 1:
        raise ValueError(
            f"x_support {tuple(x_support.shape)} and y_support {tuple(y_support.shape)} must both "
            "be (num_tasks, k_support, 1); for one task add the task dimension with .unsqueeze(0)"
        )


@dataclass
class BlackBoxSine:
    """The recurrent regressor of :class:`BlackBoxRegressor`, meta-trained on sinusoids.

    The meta-loss is the query MSE after *every* prefix of the support set, averaged, so one
    model serves 1 to K support points (RL² likewise is scored at every pull).

    Args:
        hidden_size: GRU units.
        shots: support sizes of the adaptation curve.
    """

    hidden_size: int = 64
    shots: tuple[int, ...] = (1, 5, 10)
    kind = "supervised"
    name = "black-box (GRU)"
    model: BlackBoxRegressor | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.model is None:
            self.model = BlackBoxRegressor(self.hidden_size)

    def init_params(self, generator, device=None) -> Params:
        return _module_params(self.model, generator, device)

    def network(self) -> nn.Module:
        return self.model

    def meta_loss(self, params, tasks, generator=None) -> Tensor:
        """Query MSE after each prefix of the support set, averaged over prefixes and tasks."""
        pred = self._prefixes(params, tasks)  # (T, K, Q, 1)
        return F.mse_loss(pred, tasks.y_query[:, None].expand_as(pred))

    def _prefixes(self, params, tasks) -> Tensor:
        _check_kind(tasks, TaskBatch, self.name)
        args = (tasks.x_support, tasks.y_support, tasks.x_query)
        return functional_call(self.model, params, args, {"all_prefixes": True})

    def evaluate(self, params, tasks, generator=None) -> dict:
        with torch.no_grad():
            pred = self._prefixes(params, tasks)  # (T, K, Q, 1)
            mse = ((pred - tasks.y_query[:, None]) ** 2).mean((0, 2, 3))  # (K,)
        curve = {k: mse[k - 1].item() for k in self.shots if k <= mse.shape[0]}
        return _report(curve, tasks.x_support.shape[1], "query MSE", "support points")


# ---------------------------------------------------------------------------------------------
# Metric-based: Prototypical Networks on procedural characters


@dataclass
class ProtoNetCharacters:
    """Lesson 04's Prototypical Network (:func:`mlcourse.algorithms.fewshot.protonet_loss`) on a
    Conv4.

    Metric-based: adaptation is computing class means of the support embeddings, no
    gradient step and no recurrence. It needs a support set of labelled examples to compare
    with, which a bandit does not give: there is no natural RL form.

    Args:
        hidden_channels: Conv4 feature maps.
        shots: support images per class of the adaptation curve.
    """

    hidden_channels: int = 32
    shots: tuple[int, ...] = (1, 5, 10)
    kind = "supervised"
    name = "ProtoNet"
    model: Conv4 | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.model is None:
            self.model = Conv4(hidden_channels=self.hidden_channels)

    def init_params(self, generator, device=None) -> Params:
        return _module_params(self.model, generator, device)

    def network(self) -> nn.Module:
        return self.model

    def meta_loss(self, params, tasks, generator=None) -> Tensor:
        _check_kind(tasks, TaskBatch, self.name)
        return fewshot.protonet_loss(_WithParams(self.model, params), tasks)[0]

    def evaluate(self, params, tasks, generator=None) -> dict:
        """Query accuracy with the first ``k`` support images of each class (class-major)."""
        n_way = int(tasks.y_support.max()) + 1
        k_all = tasks.x_support.shape[1] // n_way
        curve = {}
        model = _WithParams(self.model, params)
        for k in self.shots:
            if k > k_all:
                continue
            idx = (torch.arange(n_way)[:, None] * k_all + torch.arange(k)).flatten()
            idx = idx.to(tasks.x_support.device)
            sub = TaskBatch(
                tasks.x_support[:, idx], tasks.y_support[:, idx], tasks.x_query, tasks.y_query
            )
            curve[k] = fewshot.evaluate_protonet(model, sub, n_way=n_way).mean().item()
        return _report(curve, max(curve), "query accuracy", "shots per class")


# ---------------------------------------------------------------------------------------------
# The comparison table

EVAL_SEED = 20_210_209  # held-out tasks for every row: a generator no training run uses
APPROACH = {
    MAMLSine: "optimisation",
    MAMLBandit: "optimisation",
    BlackBoxSine: "black-box",
    BlackBoxBandit: "black-box",
    ProtoNetCharacters: "metric",
}


def held_out_report(
    learner: MetaLearner, params: Params, family, eval_tasks: int = 1000, device=None
) -> dict:
    """``learner.evaluate`` on ``eval_tasks`` held-out tasks of ``family``, drawn with
    :data:`EVAL_SEED`: the tasks of every row of lesson 09's table."""
    eval_gen = torch.Generator().manual_seed(EVAL_SEED)
    held_out = family.sample(eval_tasks, eval_gen, device)
    return learner.evaluate(params, held_out, eval_gen)


def compare(
    learner: MetaLearner,
    family,
    *,
    steps: int,
    meta_batch_size: int,
    meta_lr: float,
    seed: int = 0,
    eval_family=None,
    eval_tasks: int = 1000,
    device=None,
    max_grad_norm: float | None = None,
) -> dict:
    """Meta-trains ``learner`` with :func:`outer_loop`, measures it, evaluates it: one row.

    Memory is :func:`mlcourse.profiling.saved_tensor_bytes` of one meta-loss on a training
    meta-batch (what autograd keeps for the backward pass; the same on every device). The
    evaluation uses ``eval_tasks`` held-out tasks of ``eval_family`` (default ``family``),
    drawn with :data:`EVAL_SEED`.

    Returns:
        ``{"method", "approach", "family", "metric", "unit", "curve", "final",
        "train_seconds", "num_params", "saved_bytes", "losses"}``.
    """
    generator = torch.Generator().manual_seed(seed)
    run = outer_loop(
        learner,
        family,
        steps=steps,
        meta_batch_size=meta_batch_size,
        meta_lr=meta_lr,
        generator=generator,
        device=device,
        max_grad_norm=max_grad_norm,
    )
    tasks = family.sample(meta_batch_size, generator, device)
    saved = saved_tensor_bytes(lambda: learner.meta_loss(run.params, tasks, generator))
    report = held_out_report(learner, run.params, eval_family or family, eval_tasks, device)
    return {
        "method": learner.name,
        "approach": APPROACH.get(type(learner), "?"),
        "family": type(family).__name__.removesuffix("Family").lower(),
        **report,
        "train_seconds": run.seconds,
        "num_params": run.num_params,
        "saved_bytes": saved,
        "losses": run.losses,
        "params": run.params,
    }


def sine_baseline_rows(
    family: SineFamily, *, inner_lr: float = 0.01, num_inner_steps: int = 10, eval_tasks=1000
) -> list[dict]:
    """Reference rows for sinusoids, on the same held-out tasks as :func:`compare`: predicting
    0 everywhere, and lesson 02's adaptation (``num_inner_steps`` SGD steps of ``inner_lr``)
    from a *random* initialisation of the same MLP instead of a meta-learned one."""
    eval_gen = torch.Generator().manual_seed(EVAL_SEED)
    tasks = family.sample(eval_tasks, eval_gen)
    scratch = MAMLSine(inner_lr=inner_lr, eval_inner_steps=num_inner_steps)
    params = scratch.init_params(torch.Generator().manual_seed(1))
    report = scratch.evaluate(params, tasks)
    zero = (tasks.y_query**2).mean().item()
    zero_row = _report({k: zero for k in scratch.shots}, tasks.x_support.shape[1], "", "")
    return [
        {"method": "predict 0", "approach": "baseline", "family": "sine", **zero_row,
         "metric": report["metric"]},
        {"method": f"scratch, {num_inner_steps} SGD steps", "approach": "baseline",
         "family": "sine", **report},
    ]  # fmt: skip


def bandit_baseline_rows(
    family: BanditFamily, *, num_trials: int = 10_000, seed: int = 0
) -> list[dict]:
    """Lesson 05's strategies (:func:`mlcourse.rl.bandits.bandit_baselines`) as rows: mean
    reward per pull over a trial of ``family.num_pulls`` (``gittins``: Bayes-optimal where the
    exact dynamic programme fits, else the finite-horizon Gittins index)."""
    results = bandit_baselines(family.num_arms, family.num_pulls, num_trials, seed=seed)
    rows = []
    for name in ("random", "greedy", "ucb1", "thompson", "gittins"):
        r = results[name]
        rows.append(
            {"method": name, "approach": "baseline", "family": "bandit", "curve": {},
             "final": r["mean"] / family.num_pulls, "metric": "reward per pull", "unit": "pulls"}
        )  # fmt: skip
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of :func:`compare` (and baseline) rows.

    Example:
        >>> row = {"method": "MAML", "approach": "optimisation", "family": "sine",
        ...        "metric": "query MSE", "curve": {1: 2.0, 5: 1.0}, "final": 1.0}
        >>> format_table([row]).splitlines()[2].split()[:8]
        ['MAML', 'optimisation', 'sine', 'query', 'MSE', '2.00', '/', '1.00']
    """
    header = (
        f"{'method':<22} {'approach':<13} {'family':<10} {'metric':<15} {'adaptation curve':<18} "
        f"{'final':>6} {'train s':>10} {'params':>8} {'memory':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        curve = " / ".join(f"{v:.2f}" for v in r.get("curve", {}).values()) or "-"
        seconds = f"{r['train_seconds']:.1f}" if "train_seconds" in r else "-"
        params = f"{r['num_params']:,}" if "num_params" in r else "-"
        memory = _bytes(r["saved_bytes"]) if "saved_bytes" in r else "-"
        lines.append(
            f"{r['method'][:22]:<22} {r['approach']:<13} {r['family']:<10} {r['metric']:<15} "
            f"{curve:<18} {r['final']:>6.3f} {seconds:>10} {params:>8} {memory:>10}"
        )
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
