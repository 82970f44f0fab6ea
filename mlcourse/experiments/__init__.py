"""The experiment layer: the registry behind ``mlcourse train`` and ``mlcourse eval``.

Each family module of this package (``sine``, ``chars``, ``rl2``, ``nav``, ``metagenrl``,
``unified``) declares its recipes (``EXPERIMENTS``: name → config values), their
``DESCRIPTIONS`` and a :class:`~mlcourse.experiments.learner.Learner` subclass that does the
rest (the config it takes, the ``eval`` options, the evaluation), so the registry is one loop.
The algorithms they train are in :mod:`mlcourse.algorithms` (:mod:`mlcourse.algorithms.maml`,
:mod:`mlcourse.algorithms.rl2`, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlcourse import pretrained
from mlcourse.experiments import chars, metagenrl, nav, rl2, sine, unified
from mlcourse.experiments.learner import Experiment, Learner, experiments_of
from mlcourse.experiments.training import load_checkpoint, make_config, saved_run, train
from mlcourse.runtime import resolve_device

# options that may change when a run is resumed: they change when it stops and what it writes
# down, never what it computes
RESUMABLE_OPTIONS = ("steps", "checkpoint_every", "log_every")

FAMILIES = (
    (sine, sine.SineLearner),
    (chars, chars.CharsLearner),
    (rl2, rl2.RL2Learner),
    (nav, nav.NavLearner),
    (metagenrl, metagenrl.MetaGenRLLearner),
    (unified, unified.OuterLoopLearner),
)

EXPERIMENTS: dict[str, Experiment] = {}
for _module, _learner in FAMILIES:
    EXPERIMENTS.update(experiments_of(_learner, _module.EXPERIMENTS, _module.DESCRIPTIONS))


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run_training(
    name: str,
    out: str | Path,
    *,
    overrides: dict | None = None,
    device=None,
    max_seconds=None,
    resume=False,
    progress=True,
    init_from=None,
) -> dict:
    """Trains (or resumes) experiment ``name`` into ``out``; returns the summary.
    ``init_from``: a run of the same experiment whose weights start this one, or the name of
    an agent of it that the course ships."""
    exp = get(name)
    overrides = dict(overrides or {})
    if resume:
        saved_name, saved = saved_run(out)
        if saved_name != name:
            raise ValueError(
                f"{out} holds a '{saved_name}' run, not '{name}': resume it with "
                f"`mlcourse train {saved_name} --out {out} --resume`"
            )
        changed = {
            k: v for k, v in overrides.items() if k not in RESUMABLE_OPTIONS and saved.get(k) != v
        }
        if changed:
            resumable = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE_OPTIONS)
            raise ValueError(
                f"cannot change {sorted(changed)} when resuming (only {resumable}); "
                "start a new run in another --out instead"
            )
        config = make_config(exp.config_cls, {**saved, **overrides})
    else:
        config = make_config(exp.config_cls, {**exp.defaults, **overrides})
    return train(
        name,
        exp.learner,
        config,
        out,
        device=device,
        max_seconds=max_seconds,
        resume=resume,
        progress=progress,
        init_from=init_from,
    )


def load_learner(name: str, checkpoint: str | Path, device=None) -> tuple[Learner, dict]:
    """Rebuilds the learner of a finished (or interrupted) run from its checkpoint.

    ``checkpoint`` is a run folder, or the name of a policy of this experiment that the course
    ships (e.g. ``rl2-bandit-k5-n10``): its weights in a fresh learner, with a state that
    holds ``step`` (the iterations it was trained for) and ``shipped`` (its name)."""
    exp = get(name)
    device = resolve_device(device)
    if not Path(checkpoint).exists():  # not a run folder: an agent the course ships?
        agent = pretrained.load_for(name, str(checkpoint), "--checkpoint")
        return agent.learner(device), {"step": agent.steps, "shipped": agent.name}
    state = load_checkpoint(checkpoint, device)
    if state["experiment"] != name:
        raise ValueError(f"{checkpoint} holds a '{state['experiment']}' run, not '{name}'")
    learner = exp.learner(make_config(exp.config_cls, state["config"]), device)
    learner.load_state_dict(state["learner"])
    return learner, state


def run_evaluation(
    name: str, checkpoint: str | Path, opts: argparse.Namespace, device=None
) -> dict:
    """Evaluates a checkpoint of experiment ``name`` with the experiment's eval options."""
    learner, state = load_learner(name, checkpoint, device)
    return {
        "experiment": name,
        "checkpoint": str(checkpoint),
        "trained_steps": state["step"],
        **learner.evaluate(opts),
    }
