"""Meta-learning on sinusoid regression: MAML, first-order MAML, Meta-SGD, Reptile, CAVIA and
the "pretrained on all tasks" baseline, as trainable and evaluable experiments.

Defaults follow Finn et al. (2017), section 5.1: a 1-40-40-1 ReLU network, K = 10 support
points, meta-batches of 25 tasks, one inner step of size 0.01, Adam with step 0.001 for
70 000 iterations. Used by ``mlcourse train/eval *-sine`` and lessons 01–03.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mlcourse.algorithms import cavia
from mlcourse.algorithms.maml import adapt, compile_meta_loss, meta_loss, params_of
from mlcourse.algorithms.metasgd import init_inner_lrs
from mlcourse.algorithms.reptile import reptile_step
from mlcourse.experiments.learner import Learner, Weights, loaded
from mlcourse.models import MLP
from mlcourse.options import (
    check_config,
    nonnegative_float,
    nonnegative_int,
    option,
    parse_widths,
    positive_int,
)
from mlcourse.runtime import make_adam, restore_generator
from mlcourse.stats import ci95
from mlcourse.tasks import Sinusoid

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "cavia", "pretrain")
EVAL_SEED = 20_170_703  # held-out tasks: a generator no training run uses
EVAL_QUERY_POINTS = 100


@dataclass
class SineConfig:
    """Hyperparameters of a sinusoid experiment (each is a ``mlcourse train`` option)."""

    algorithm: str = option("maml", f"one of {', '.join(ALGORITHMS)}", choices=ALGORITHMS)
    seed: int = option(0, "seed of the initialisation and of the training tasks")
    steps: int = option(70_000, "meta-training iterations", min=1)
    meta_batch_size: int = option(25, "tasks per meta-iteration", min=1)
    k_support: int = option(10, "support points per training task (K)", min=1)
    k_query: int = option(10, "query points per training task", min=1)
    inner_lr: float = option(
        0.01,
        "inner-loop SGD step size (Meta-SGD: only for evaluation; CAVIA: the context's)",
        min=0,
    )
    num_inner_steps: int = option(1, "inner-loop steps during meta-training", min=1)
    meta_lr: float = option(
        1e-3, "Adam step size of the outer loop (Reptile: interpolation ε)", above=0
    )
    hidden: str = option("40,40", "hidden layer widths, comma separated", widths=True)
    num_context: int = option(5, "CAVIA: context inputs beside x, adapted per task", min=1)
    compile: bool = option(
        False,
        "MAML, first-order MAML, Meta-SGD: torch.compile the meta-loss (its pure torch.func"
        " form, checked against eager on the first batch; eager is used if they differ)",
    )
    checkpoint_every: float = option(30.0, "seconds between checkpoints", min=0)
    log_every: int = option(100, "steps between log lines", min=1)

    def __post_init__(self):
        check_config(self)
        if self.compile and self.algorithm in ("reptile", "cavia", "pretrain"):
            raise ValueError(
                f"compile is for MAML, first-order MAML and Meta-SGD, not {self.algorithm}: "
                "train without --compile"
            )

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return parse_widths(self.hidden)


EXPERIMENTS: dict[str, dict] = {
    "maml-sine": {"algorithm": "maml"},
    "fomaml-sine": {"algorithm": "fomaml"},
    "metasgd-sine": {"algorithm": "metasgd"},
    "reptile-sine": {
        "algorithm": "reptile",
        "num_inner_steps": 5,
        "meta_lr": 1.0,
        "steps": 30_000,
    },
    # the CAVIA authors' sinusoid setting: five context inputs, one inner step of size 1.0,
    # Adam 0.001 on 25 tasks of K = 10 for 50 000 iterations
    "cavia-sine": {"algorithm": "cavia", "inner_lr": 1.0, "steps": 50_000},
    "pretrain-sine": {"algorithm": "pretrain"},
}
DESCRIPTIONS = {
    "maml-sine": "MAML (second order) on sinusoid regression",
    "fomaml-sine": "first-order MAML on sinusoid regression",
    "metasgd-sine": "Meta-SGD (learned per-parameter step sizes) on sinusoid regression",
    "reptile-sine": "Reptile (batched) on sinusoid regression",
    "cavia-sine": "CAVIA (a few context inputs adapted per task) on sinusoid regression",
    "pretrain-sine": "baseline: one network trained on all sinusoids jointly, fine-tuned at "
    "test time",
}


def _model(config: SineConfig) -> MLP:
    """The regressor: x alone, or x and CAVIA's context."""
    inputs = 1 + (config.num_context if config.algorithm == "cavia" else 0)
    return MLP(inputs, 1, config.hidden_sizes)


class SineLearner(Learner):
    """Holds the model, meta-parameters, optimizer and task generator of one run.

    Args:
        config: the run's :class:`SineConfig`.
        device: where the model and the sampled tasks live.
    """

    CONFIG = SineConfig
    FITS = "the same hidden widths"

    def __init__(self, config: SineConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.family = Sinusoid()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = _model(config).to(self.device)
        self.params = params_of(self.model)
        self.inner_lrs = None
        meta_params = list(self.params.values())
        if config.algorithm == "metasgd":
            gen = torch.Generator().manual_seed(config.seed + 1)
            self.inner_lrs = init_inner_lrs(self.params, generator=gen)
            meta_params += list(self.inner_lrs.values())
        self.optimizer = (
            None if config.algorithm == "reptile" else make_adam(meta_params, lr=config.meta_lr)
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self._compiled = None  # with compile=True: the compiled meta-loss, from the first step
        self.compile_info: dict = {}

    def _compile(self, tasks, kwargs) -> None:
        self._compiled, self.compile_info = compile_meta_loss(
            self.model, self.params, tasks, **kwargs
        )
        self.compile_info["compiled"] = self._compiled is not None
        if self._compiled is None:
            warnings.warn(
                f"torch.compile not used, training continues in eager mode: "
                f"{self.compile_info['compiled_error']}",
                stacklevel=2,
            )

    def sample(self):
        c = self.config
        return self.family.sample(
            c.meta_batch_size, c.k_support, c.k_query, generator=self.generator, device=self.device
        )

    def step(self, step: int) -> Tensor:
        """One meta-iteration; returns the loss it optimised (post-adaptation query MSE for
        MAML-style methods, pre-update query MSE for Reptile, joint MSE for pretraining)."""
        c, tasks = self.config, self.sample()
        if c.algorithm == "reptile":
            eps = c.meta_lr * (1 - step / c.steps)  # linear annealing, as in the paper
            with torch.no_grad():
                loss = F.mse_loss(self.model(tasks.x_query), tasks.y_query)
            new = reptile_step(
                self.model,
                self.params,
                tasks,
                loss_fn=F.mse_loss,
                inner_lr=c.inner_lr,
                num_inner_steps=c.num_inner_steps,
                outer_lr=eps,
            )
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(new[name])
            return loss
        self.optimizer.zero_grad(set_to_none=True)
        if c.algorithm == "pretrain":
            x = torch.cat([tasks.x_support, tasks.x_query], 1)
            y = torch.cat([tasks.y_support, tasks.y_query], 1)
            loss = F.mse_loss(self.model(x), y)
        elif c.algorithm == "cavia":
            loss = cavia.meta_loss(
                self.model,
                self.params,
                tasks,
                loss_fn=F.mse_loss,
                inner_lr=c.inner_lr,
                num_context=c.num_context,
                num_inner_steps=c.num_inner_steps,
            )
        else:
            kwargs = {
                "loss_fn": F.mse_loss,
                "inner_lr": self.inner_lrs if self.inner_lrs is not None else c.inner_lr,
                "num_inner_steps": c.num_inner_steps,
                "first_order": c.algorithm == "fomaml",
            }
            if c.compile and not self.compile_info:
                self._compile(tasks, kwargs)
            if self._compiled is not None:
                loss = self._compiled(self.model, self.params, tasks)
            else:
                loss = meta_loss(self.model, self.params, tasks, **kwargs)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def parameters(self) -> list[Tensor]:
        extra = list(self.inner_lrs.values()) if self.inner_lrs is not None else []
        return list(self.params.values()) + extra

    def eval_inner_lr(self):
        """The step size(s) used to adapt at test time."""
        if self.inner_lrs is not None:
            return {n: lr.detach() for n, lr in self.inner_lrs.items()}
        return self.config.inner_lr

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "inner_lrs": None
            if self.inner_lrs is None
            else {n: t.detach().clone() for n, t in self.inner_lrs.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.inner_lrs is not None:
            with torch.no_grad():
                for n, t in state["inner_lrs"].items():
                    self.inner_lrs[n].copy_(t)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        restore_generator(self.generator, state["generator"])

    def weights(self) -> Weights:
        out = {"model": self.model.state_dict()}
        if self.inner_lrs is not None:
            out["inner_lrs"] = {n: t.detach() for n, t in self.inner_lrs.items()}
        return out

    @classmethod
    def network(cls, config: SineConfig, weights: Weights, device=None) -> nn.Module:
        model = _model(config)
        return loaded(model, weights["model"], device)

    @staticmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping) -> None:
        parser.add_argument(
            "--shots", type=positive_int, default=10, help="support points per task (K)"
        )
        parser.add_argument(
            "--inner-steps", type=nonnegative_int, default=1, help="adaptation steps"
        )
        parser.add_argument("--num-tasks", type=positive_int, default=1000, help="held-out tasks")
        parser.add_argument(
            "--inner-lr",
            type=nonnegative_float,
            default=None,
            help="test-time step size (default: the run's; Meta-SGD: learned)",
        )
        parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of held-out tasks")

    def evaluate(self, options: argparse.Namespace) -> dict:
        inner_lr = self.eval_inner_lr() if options.inner_lr is None else options.inner_lr
        figures = evaluate(
            self.model,
            self.params,
            inner_lr,
            shots=options.shots,
            inner_steps=options.inner_steps,
            num_tasks=options.num_tasks,
            seed=options.seed,
            context=self.config.num_context if self.config.algorithm == "cavia" else 0,
        )
        return {
            "shots": options.shots,
            "inner_steps": options.inner_steps,
            "num_tasks": options.num_tasks,
            "inner_lr": "learned" if isinstance(inner_lr, dict) else inner_lr,
            **figures,
        }


def evaluate(
    model: nn.Module,
    params: dict[str, Tensor],
    inner_lr,
    *,
    shots: int,
    inner_steps: int,
    num_tasks: int = 1000,
    seed: int = EVAL_SEED,
    k_query: int = EVAL_QUERY_POINTS,
    chunk_size: int = 1000,
    context: int = 0,
) -> dict:
    """Query MSE on held-out tasks after 0, 1, ..., ``inner_steps`` steps of adaptation.

    Every task is adapted on ``shots`` support points with SGD of step ``inner_lr`` (a float,
    or Meta-SGD's per-parameter dict) and scored on ``k_query`` fresh points. With
    ``context`` > 0 (CAVIA) the weights stay and a context of that size, from zero, adapts.

    Args:
        model, params: the meta-learned initialisation.
        inner_lr: test-time step size(s).
        shots: support points per task (K).
        inner_steps: adaptation steps.
        num_tasks: held-out tasks, drawn from a generator seeded with ``seed``.
        seed: seed of the held-out tasks (the default is used by every reported figure).
        k_query: query points per task.
        chunk_size: tasks adapted at once (bounds memory).
        context: CAVIA's context size (0: adapt the weights).

    Returns:
        ``{"mse": after inner_steps, "ci95": its 95% interval half-width,
        "mse_by_step": [after 0, 1, ..., inner_steps steps]}``.
    """
    device = next(iter(params.values())).device
    dtype = next(iter(params.values())).dtype
    generator = torch.Generator().manual_seed(seed)
    tasks = Sinusoid().sample(
        num_tasks, shots, k_query, generator=generator, device=device, dtype=dtype
    )
    params = {n: p.detach() for n, p in params.items()}

    if context:  # CAVIA: the state that adapts is the context; θ stays

        def one_step(c, x, y):
            return cavia.context_step(model, params, c, x, y, loss_fn=F.mse_loss, inner_lr=inner_lr)

        def query_mse(c, x, y):
            return F.mse_loss(functional_call(model, params, (cavia.with_context(x, c),)), y)

        def start(num: int):
            return torch.zeros(num, context, device=device, dtype=dtype)

    else:

        def one_step(p, x, y):
            return adapt(model, p, x, y, loss_fn=F.mse_loss, inner_lr=inner_lr, first_order=True)

        def query_mse(p, x, y):
            return F.mse_loss(functional_call(model, p, (x,)), y)

        def start(num: int):
            return {n: v.expand(num, *v.shape) for n, v in params.items()}

    per_step = []
    with torch.no_grad():
        for lo in range(0, num_tasks, chunk_size):
            t = tasks[lo : lo + chunk_size]
            p = start(t.num_tasks)
            rows = [vmap(query_mse)(p, t.x_query, t.y_query)]
            for _ in range(inner_steps):
                p = vmap(one_step)(p, t.x_support, t.y_support)
                rows.append(vmap(query_mse)(p, t.x_query, t.y_query))
            per_step.append(torch.stack(rows))
    losses = torch.cat(per_step, dim=1)  # (inner_steps + 1, num_tasks)
    final = losses[-1]
    if not bool(torch.isfinite(final).all()):
        raise FloatingPointError(
            "adaptation diverged on some held-out tasks (NaN or infinite MSE): "
            "try a smaller --inner-lr or fewer --inner-steps"
        )
    return {
        "mse": final.mean().item(),
        "ci95": ci95(final)[1],
        "mse_by_step": [round(v, 6) for v in losses.mean(1).tolist()],
    }
