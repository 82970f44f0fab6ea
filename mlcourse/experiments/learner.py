"""The learner type every experiment implements, and the experiment spec the registry lists.

A *learner* holds everything one training run changes: networks, optimizer, environments and
random generators. :func:`mlcourse.experiments.training.train` drives any learner the same way
(``step``, ``metrics``, checkpoints with ``state_dict`` / ``load_state_dict``); ``mlcourse eval``
calls its ``evaluate`` with the options its ``add_eval_args`` declared; ``--init-from`` and the
agents the course ships (:mod:`mlcourse.pretrained`) go through ``weights`` and ``load_weights``.

Adding an experiment family means writing one :class:`Learner` subclass and its config; the
registry (:mod:`mlcourse.experiments`) lists it with an :class:`Experiment` per named recipe.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

Weights = dict[str, dict[str, Tensor]]


class Learner(abc.ABC):
    """One run of one experiment family.

    Subclasses set :attr:`CONFIG`, take ``(config, device)`` in ``__init__`` and implement the
    abstract methods.

    Attributes:
        CONFIG: the config dataclass; each of its fields is a ``mlcourse train`` option.
        FITS: what another run's weights must share to be loaded (for the error message).
        config: the run's config.
        device: where the run computes.
    """

    CONFIG: ClassVar[type]
    FITS: ClassVar[str] = "the same network options"

    config: Any
    device: torch.device

    @abc.abstractmethod
    def step(self, step: int) -> Tensor:
        """One training iteration (``step`` counts from 0); returns the loss it optimised."""

    @abc.abstractmethod
    def parameters(self) -> Iterable[Tensor]:
        """The tensors training changes (checked for NaN after each step)."""

    def metrics(self) -> dict[str, float]:
        """Figures added to the next log line, averaged since the last call (none by default)."""
        return {}

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything a resumed run needs: weights, optimizer state, generators."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s output."""

    @abc.abstractmethod
    def weights(self) -> Weights:
        """The learned weights, by component (e.g. ``{"policy": policy.state_dict()}``): what a
        shipped file holds and ``--init-from`` takes. The tensors are the learner's own (not
        copies): :meth:`load_weights` writes into them."""

    def load_weights(self, weights: Mapping[str, Mapping[str, Tensor]], source: str) -> None:
        """Starts from another run's weights (``weights``: its :meth:`weights`, or its whole
        :meth:`state_dict`, of which only the weight components are read); the optimizer,
        generators and schedule stay fresh.

        Every tensor must have this run's shape; ``source`` names the other run in the error.
        """
        own = self.weights()
        theirs = self._incoming_weights(own, weights)
        wrong = [
            f"{part}.{name}" if len(own) > 1 else name
            for part, tensors in own.items()
            for name, tensor in tensors.items()
            if name not in theirs.get(part, {}) or theirs[part][name].shape != tensor.shape
        ]
        wrong += [  # tensors of the other run that this one has no place for
            f"{part}.{name}" if len(own) > 1 else name
            for part, tensors in theirs.items()
            for name in tensors
            if name not in own[part]
        ]
        if wrong:
            shown = ", ".join(wrong[:6]) + (f" and {len(wrong) - 6} more" if len(wrong) > 6 else "")
            raise ValueError(
                f"the weights of {source} do not fit this run's ({shown} differ): "
                f"it needs {self.FITS}"
            )
        with torch.no_grad():
            for part, tensors in own.items():
                for name, tensor in tensors.items():
                    tensor.copy_(theirs[part][name])

    def _incoming_weights(self, own: Weights, weights: Mapping) -> Mapping[str, Mapping]:
        """The components of ``weights`` to load, for learners that adapt them first (e.g. a
        part this run has and the other lacks, which then starts afresh)."""
        return {part: weights[part] for part in own if weights.get(part) is not None}

    @classmethod
    @abc.abstractmethod
    def network(cls, config, weights: Weights, device=None) -> torch.nn.Module:
        """The trained network alone, built from ``weights`` and frozen in eval mode (what a
        lesson uses of a shipped agent, without the optimizer, environments or buffers)."""

    @staticmethod
    @abc.abstractmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
        """Adds the ``mlcourse eval`` options (``defaults``: the experiment's config values)."""

    @abc.abstractmethod
    def evaluate(self, options: argparse.Namespace) -> dict:
        """The figures of the trained learner under the ``eval`` options."""


def loaded(module: torch.nn.Module, state: Mapping[str, Tensor], device=None) -> torch.nn.Module:
    """``module`` holding ``state``, in eval mode, on ``device`` (where it is, if None): what
    :meth:`Learner.network` returns."""
    module.load_state_dict(state)
    return (module.to(device) if device is not None else module).eval()


@dataclass(frozen=True)
class Experiment:
    """One named recipe: ``mlcourse train NAME`` and ``mlcourse eval NAME``.

    Attributes:
        name: the command-line name, e.g. ``maml-sine``.
        description: one line for ``--help``.
        learner: the :class:`Learner` subclass that trains it.
        defaults: the recipe's values for config fields (the config's own defaults otherwise).
    """

    name: str
    description: str
    learner: type[Learner]
    defaults: dict = field(default_factory=dict)

    @property
    def config_cls(self) -> type:
        return self.learner.CONFIG

    def add_eval_args(self, parser: argparse.ArgumentParser) -> None:
        self.learner.add_eval_args(parser, self.defaults)


def experiments_of(
    learner: type[Learner], recipes: Mapping[str, dict], descriptions: Mapping[str, str]
) -> dict[str, Experiment]:
    """The :class:`Experiment` of each recipe of one family (``descriptions`` by name)."""
    return {
        name: Experiment(name, descriptions[name], learner, dict(defaults))
        for name, defaults in recipes.items()
    }
