"""Lesson 09's meta-learners as experiments: its one outer loop as a learner.

:class:`OuterLoopLearner`, a :class:`~mlcourse.experiments.learner.Learner`, runs
:func:`mlcourse.algorithms.unified.outer_step` for any meta-learner and task family of
:mod:`mlcourse.algorithms.unified`. Two loops drive that same learner:

- :func:`mlcourse.algorithms.unified.outer_loop`, in memory, for lesson 09's cells (a learner built
  with :meth:`OuterLoopLearner.of` from the objects the lesson made);
- :func:`mlcourse.experiments.training.train`, with checkpoints, resumption and logs, for
  ``mlcourse train unified-ROW`` (a learner built from a :class:`UnifiedConfig` that names one
  row of the lesson's table, ``ROWS``).

With the same seed and budget both give the same parameters, and ``mlcourse eval unified-ROW``
measures them on the held-out tasks of :func:`mlcourse.algorithms.unified.compare`, so it reproduces
the lesson's row.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlcourse.algorithms import unified
from mlcourse.experiments.learner import Learner, Weights, loaded
from mlcourse.options import check_config, option, positive_int
from mlcourse.runtime import make_adam, restore_generator

# Lesson 09's table: each row's meta-learner (fresh each time), its training family and its
# held-out family (task families are frozen dataclasses, so rows share them).
_SINE, _SINE_HELD_OUT = unified.SineFamily(), unified.SineFamily(k_query=100)
_BANDITS = unified.BanditFamily(num_arms=5, num_pulls=10)
ROWS: dict[str, Callable[[], tuple]] = {
    "maml-sine": lambda: (unified.MAMLSine(), _SINE, _SINE_HELD_OUT),
    "blackbox-sine": lambda: (unified.BlackBoxSine(hidden_size=64), _SINE, _SINE_HELD_OUT),
    "maml-bandit": lambda: (unified.MAMLBandit(), _BANDITS, _BANDITS),
    "blackbox-bandit": lambda: (unified.BlackBoxBandit(hidden_size=32), _BANDITS, _BANDITS),
    "protonet-chars": lambda: (
        unified.ProtoNetCharacters(hidden_channels=32),
        unified.CharactersFamily(k_shot=5),
        unified.CharactersFamily(k_shot=10, k_query=5, split="test"),
    ),
}


@dataclass
class UnifiedConfig:
    """Hyperparameters of one row of lesson 09's table (each is a ``mlcourse train`` option)."""

    row: str = option("maml-bandit", "the row of lesson 09's table", choices=tuple(ROWS))
    seed: int = option(0, "seed of the initialisation, the tasks and the inner sampling")
    steps: int = option(1000, "outer iterations", min=1)
    meta_batch_size: int = option(64, "tasks per outer iteration", min=1)
    meta_lr: float = option(0.05, "Adam step size of the outer loop", above=0)
    max_grad_norm: float = option(
        0.0, "clip the meta-gradient to this norm (0: no clipping)", min=0
    )
    checkpoint_every: float = option(30.0, "seconds between checkpoints", min=0)
    log_every: int = option(100, "steps between log lines", min=1)

    def __post_init__(self):
        check_config(self)


EXPERIMENTS: dict[str, dict] = {  # the budgets and step sizes of lesson 09's table
    "unified-maml-sine": {
        "row": "maml-sine",
        "steps": 10_000,
        "meta_batch_size": 25,
        "meta_lr": 3e-3,
    },
    "unified-blackbox-sine": {
        "row": "blackbox-sine",
        "steps": 8000,
        "meta_batch_size": 25,
        "meta_lr": 3e-3,
    },
    "unified-maml-bandit": {
        "row": "maml-bandit",
        "steps": 1000,
        "meta_batch_size": 64,
        "meta_lr": 0.05,
    },
    "unified-blackbox-bandit": {
        "row": "blackbox-bandit",
        "steps": 4000,
        "meta_batch_size": 128,
        "meta_lr": 1e-2,
        "max_grad_norm": 1.0,
    },
    "unified-protonet-chars": {
        "row": "protonet-chars",
        "steps": 300,
        "meta_batch_size": 2,
        "meta_lr": 1e-3,
    },
}
DESCRIPTIONS = {
    "unified-maml-sine": "lesson 09: MAML on sinusoids through the one outer loop",
    "unified-blackbox-sine": "lesson 09: a GRU regressor (supervised RL²) on sinusoids",
    "unified-maml-bandit": "lesson 09: MAML on Bernoulli bandits (DiCE meta-gradient)",
    "unified-blackbox-bandit": "lesson 09: RL² on Bernoulli bandits, trained by REINFORCE",
    "unified-protonet-chars": "lesson 09: Prototypical Networks on procedural characters",
}


class OuterLoopLearner(Learner):
    """Adam on a meta-learner's parameters, one sampled meta-batch per step.

    Built from a :class:`UnifiedConfig` (``mlcourse train``) or, with :meth:`of`, from any
    :class:`mlcourse.algorithms.unified.MetaLearner` and task family (lesson 09's
    :func:`mlcourse.algorithms.unified.outer_loop`).

    Attributes:
        meta_learner, family: what is meta-trained, on which tasks.
        eval_family: the family of the held-out tasks (``evaluate``).
        params: the meta-parameters, leaf tensors.
        generator: the CPU generator of the parameters' initialisation, the tasks and the inner
            loop's sampling.
    """

    CONFIG = UnifiedConfig
    FITS = "the same row of lesson 09's table"

    def __init__(self, config: UnifiedConfig, device: torch.device | str = "cpu"):
        self.config = config
        meta_learner, family, eval_family = ROWS[config.row]()
        self._setup(
            meta_learner,
            family,
            eval_family=eval_family,
            meta_batch_size=config.meta_batch_size,
            meta_lr=config.meta_lr,
            generator=torch.Generator().manual_seed(config.seed),
            device=torch.device(device),
            max_grad_norm=config.max_grad_norm or None,
        )

    @classmethod
    def of(cls, meta_learner, family, **options) -> OuterLoopLearner:
        """A learner for the given meta-learner and family, evaluated on that family (no
        config: it is not a named row). ``options``: ``meta_batch_size``, ``meta_lr``,
        ``generator``, and optionally ``params`` (parameters to continue from, trained in
        place), ``device``, ``max_grad_norm``, as :func:`mlcourse.algorithms.unified.outer_loop`
        takes them."""
        self = cls.__new__(cls)
        self.config = None
        self._setup(meta_learner, family, eval_family=family, **options)
        return self

    def _setup(
        self,
        meta_learner,
        family,
        *,
        eval_family,
        meta_batch_size,
        meta_lr,
        generator,
        params=None,
        device=None,
        max_grad_norm=None,
    ) -> None:
        learner_kind = getattr(meta_learner, "kind", None)
        family_kind = getattr(family, "kind", None)
        if learner_kind != family_kind:
            raise TypeError(
                f"{type(meta_learner).__name__} meta-learns {learner_kind or '?'} tasks but "
                f"{type(family).__name__} samples {family_kind or '?'} tasks: pair each "
                "learner with a family of its kind"
            )
        if not isinstance(meta_batch_size, int) or meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be a positive int, got {meta_batch_size!r}")
        self.meta_learner, self.family, self.eval_family = meta_learner, family, eval_family
        self.meta_batch_size, self.max_grad_norm = meta_batch_size, max_grad_norm
        self.generator = generator
        if params is None:
            params = meta_learner.init_params(generator, device)
        self.params = params
        self.device = device if device is not None else next(iter(params.values())).device
        self.optimizer = make_adam(params.values(), lr=meta_lr)

    def step(self, step: int) -> Tensor:
        tasks = self.family.sample(self.meta_batch_size, self.generator, self.device)
        return unified.outer_step(
            self.meta_learner,
            self.params,
            self.optimizer,
            tasks,
            self.generator,
            max_grad_norm=self.max_grad_norm,
        )

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def state_dict(self) -> dict:
        return {
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, tensor in state["params"].items():
                self.params[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        restore_generator(self.generator, state["generator"])

    def weights(self) -> Weights:
        return {"params": self.params}

    @classmethod
    def network(cls, config: UnifiedConfig, weights: Weights, device=None) -> nn.Module:
        meta_learner = ROWS[config.row]()[0]
        return loaded(meta_learner.network(), weights["params"], device)

    @staticmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping) -> None:
        lesson = 100 if defaults.get("row") == "protonet-chars" else 1000
        parser.add_argument(
            "--eval-tasks", type=positive_int, default=lesson, help="held-out tasks (the lesson's)"
        )

    def evaluate(self, options: argparse.Namespace) -> dict:
        report = unified.held_out_report(
            self.meta_learner, self.params, self.eval_family, options.eval_tasks, self.device
        )
        row = {"row": self.config.row} if self.config is not None else {}  # None: built by of()
        return {**row, "eval_tasks": options.eval_tasks, **report}
