"""The agents, policies and learned objectives the course ships, in one store.

Each shipped file (``mlcourse/pretrained/NAME.pt``) holds a finished run's experiment, config,
weights and how it was trained; ``index.json`` beside them records the figure of the
reproduction report that each one reproduces and the ``mlcourse eval`` options that measure
it. Files are read as tensors and plain values only (``weights_only=True``).

Example:
    >>> from mlcourse import pretrained
    >>> "rl2-bandit-k5-n10" in pretrained.names()
    True
    >>> agent = pretrained.load("rl2-bandit-k5-n10")
    >>> agent.experiment, agent.config.num_arms, agent.config.num_pulls
    ('rl2-bandit', 5, 10)
    >>> agent.network().hidden_size
    256
    >>> agent.figure.command(agent)
    'mlcourse eval rl2-bandit --checkpoint rl2-bandit-k5-n10 --episodes 20000 --json'

From the command line: ``mlcourse pretrained`` lists them, ``mlcourse eval EXPERIMENT
--checkpoint NAME`` evaluates one and ``mlcourse train EXPERIMENT --init-from NAME`` starts a
run from one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import torch

from mlcourse.experiments.training import load_checkpoint, make_config
from mlcourse.runtime import safe_load

INDEX = "index.json"


@dataclass(frozen=True)
class Figure:
    """The figure of the reproduction report that a shipped agent reproduces.

    Attributes:
        text: what the figure is, in words.
        section: the section of ``docs/reproductions.md`` that reports it.
        eval_args: the ``mlcourse eval`` options that measure it (beside ``--checkpoint``).
        key: the entry of the evaluation's result that holds it (``a.b``: an entry of an entry).
        value: the reported figure (a list: one per entry, e.g. returns after 0–3 steps).
        tolerance: how far another CPU's rounding may move it.
    """

    text: str
    section: str
    eval_args: tuple[str, ...]
    key: str
    value: float | tuple[float, ...]
    tolerance: float

    def command(self, agent: Pretrained) -> str:
        """The command that measures this figure for ``agent``."""
        options = " ".join(("--checkpoint", agent.name, *self.eval_args, "--json"))
        return f"mlcourse eval {agent.experiment} {options}"

    def measured(self, result: dict) -> float | tuple[float, ...]:
        """This figure's entry of an evaluation's ``result``."""
        value: Any = result
        for part in self.key.split("."):
            value = value[part]
        return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Pretrained:
    """One shipped agent.

    Attributes:
        name: its name, e.g. ``rl2-bandit-k5-n10``.
        experiment: the experiment it is a run of (``mlcourse train EXPERIMENT``).
        config: the run's config dataclass.
        weights: the learner's weights by component (see
            :meth:`mlcourse.experiments.learner.Learner.weights`).
        steps: training iterations.
        seconds: training time.
        trained: how it was trained (the command, the machine).
        figure: the report figure it reproduces.
    """

    name: str
    experiment: str
    config: Any
    weights: dict[str, dict[str, torch.Tensor]]
    steps: int
    seconds: float
    trained: str
    figure: Figure

    def network(self, device=None) -> torch.nn.Module:
        """The trained network alone (a policy, or a learned objective), in eval mode."""
        learner = _experiment(self.experiment).learner
        return learner.network(self.config, self.weights, device)

    def learner(self, device=None):
        """A fresh learner of the experiment holding these weights (optimizer, environments and
        generators new), e.g. to evaluate it or to train on from it."""
        from mlcourse.runtime import resolve_device

        learner = _experiment(self.experiment).learner(self.config, resolve_device(device))
        learner.load_weights(self.weights, source=f"shipped {self.name}")
        return learner

    def describe(self) -> dict:
        """Everything but the weights, as plain values (``mlcourse pretrained --json``)."""
        return {
            "name": self.name,
            "experiment": self.experiment,
            "steps": self.steps,
            "seconds": self.seconds,
            "trained": self.trained,
            "reproduces": {**dataclasses.asdict(self.figure), "command": self.figure.command(self)},
            "config": dataclasses.asdict(self.config),
        }


def _experiment(name: str):
    from mlcourse import experiments  # the registry imports every family, which import this

    return experiments.get(name)


def _index() -> dict[str, dict]:
    return json.loads((files(__name__) / INDEX).read_text())


def names() -> list[str]:
    """The names of the shipped agents, sorted."""
    return sorted(_index())


def load(name: str, device=None) -> Pretrained:
    """The shipped agent ``name`` (weights on ``device``, default the CPU).

    Raises:
        KeyError: the course ships no agent of that name (the message lists those it ships).
    """
    index = _index()
    if name not in index:
        raise KeyError(f"no shipped agent {name!r}; the course ships {sorted(index)}")
    with as_file(files(__name__) / f"{name}.pt") as path:
        saved = safe_load(path, device or "cpu")
    spec = _experiment(saved["experiment"])
    entry = index[name]
    figure = Figure(
        text=entry["text"],
        section=entry["section"],
        eval_args=tuple(entry["eval_args"]),
        key=entry["key"],
        value=tuple(entry["value"]) if isinstance(entry["value"], list) else entry["value"],
        tolerance=entry["tolerance"],
    )
    return Pretrained(
        name=name,
        experiment=saved["experiment"],
        config=make_config(spec.config_cls, saved["config"]),
        weights=saved["weights"],
        steps=saved["steps"],
        seconds=saved["seconds"],
        trained=saved["note"],
        figure=figure,
    )


def load_for(experiment: str, name: str, option: str) -> Pretrained:
    """The shipped agent ``name``, checked to be a run of ``experiment``. ``option``
    (``--init-from``, ``--checkpoint``) is the command-line option that named it, for the
    errors: a name the course does not ship, or an agent of another experiment."""
    index = _index()
    if name not in index:
        own = [n for n in sorted(index) if _shipped_experiment(n) == experiment]
        hint = f", or name one it ships for {experiment} ({', '.join(own)})" if own else ""
        raise FileNotFoundError(
            f"{option} {name}: no such run folder, and the course ships no agent of that "
            f"name. Train one with `mlcourse train {experiment} --out {name}`{hint}"
        )
    agent = load(name)
    if agent.experiment != experiment:
        raise ValueError(
            f"{option} {name} is a shipped '{agent.experiment}' agent; "
            f"'{experiment}' can only use a '{experiment}' one"
        )
    return agent


def _shipped_experiment(name: str) -> str:
    with as_file(files(__name__) / f"{name}.pt") as path:
        return safe_load(path, "cpu")["experiment"]


def _training_so_far(state: dict) -> tuple[int, float]:
    """Iterations and seconds of a run together with the runs it continued (``--init-from``,
    followed back through their checkpoints, or a shipped agent's own totals)."""
    steps, seconds, origin = state["step"], state["seconds"], state.get("init_from")
    while origin is not None:
        if "shipped" in origin:
            agent = load(origin["shipped"])
            return steps + agent.steps, seconds + agent.seconds
        if not Path(origin["run"]).is_dir():
            raise FileNotFoundError(
                f"the run this one continued, {origin['run']}, is not there: export from the "
                "folder the runs were trained in, so that every stage's iterations are counted"
            )
        earlier = load_checkpoint(origin["run"], "cpu")
        steps, seconds = steps + earlier["step"], seconds + earlier["seconds"]
        origin = earlier.get("init_from")
    return steps, seconds


def export(run: str | Path, path: str | Path, note: str) -> dict:
    """Writes the weights of a finished run (``mlcourse train ... --out RUN``) as a shipped
    file: its experiment, config, weights (not the optimizer, environments or buffers), and
    ``note``, how it was trained. Add its figure to ``index.json`` beside it to ship it.

    A run that continued others (``--init-from``, stage after stage) is recorded with the
    iterations and seconds of every stage. Returns what was written, without the weights."""
    state = load_checkpoint(run, "cpu")
    spec = _experiment(state["experiment"])
    learner = spec.learner(make_config(spec.config_cls, state["config"]), torch.device("cpu"))
    learner.load_weights(state["learner"], source=str(run))
    steps, seconds = _training_so_far(state)
    info = {
        "experiment": state["experiment"],
        "config": state["config"],
        "steps": steps,
        "seconds": round(seconds, 1),
        "note": note,
    }
    weights = {part: {k: v.clone() for k, v in t.items()} for part, t in learner.weights().items()}
    torch.save({**info, "weights": weights}, path)
    return info
