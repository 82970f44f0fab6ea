"""The registry behind ``mlcourse train`` and ``mlcourse eval``: one entry per experiment."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlcourse import chars, maml_rl, metagenrl, rl2, sine
from mlcourse.options import nonnegative_float, nonnegative_int, positive_int
from mlcourse.training import (
    load_checkpoint,
    make_config,
    resolve_device,
    saved_run,
    shipped_policy_for,
    train,
)

# options that may change when a run is resumed: they change when it stops and what it writes
# down, never what it computes
RESUMABLE_OPTIONS = ("steps", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class Experiment:
    """How to train and evaluate one named experiment.

    Attributes:
        name: the CLI name, e.g. ``maml-sine``.
        description: one line for ``--help``.
        config_cls: the config dataclass; each field is a ``train`` option.
        defaults: the experiment's values for config fields.
        make_learner: ``make_learner(config, device) -> learner`` (see :mod:`mlcourse.training`).
        add_eval_args: adds the experiment's ``eval`` options to a parser.
        evaluate: ``evaluate(learner, options) -> dict`` of figures.
    """

    name: str
    description: str
    config_cls: type
    make_learner: Callable[[Any, torch.device], Any]
    add_eval_args: Callable[[argparse.ArgumentParser], None]
    evaluate: Callable[[Any, argparse.Namespace], dict]
    defaults: dict = field(default_factory=dict)


def _sine_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shots", type=positive_int, default=10, help="support points per task (K)"
    )
    parser.add_argument("--inner-steps", type=nonnegative_int, default=1, help="adaptation steps")
    parser.add_argument("--num-tasks", type=positive_int, default=1000, help="held-out tasks")
    parser.add_argument(
        "--inner-lr",
        type=nonnegative_float,
        default=None,
        help="test-time step size (default: the run's; Meta-SGD: learned)",
    )
    parser.add_argument("--seed", type=int, default=sine.EVAL_SEED, help="seed of held-out tasks")


def _sine_evaluate(learner: sine.SineLearner, opts: argparse.Namespace) -> dict:
    inner_lr = learner.eval_inner_lr() if opts.inner_lr is None else opts.inner_lr
    figures = sine.evaluate(
        learner.model,
        learner.params,
        inner_lr,
        shots=opts.shots,
        inner_steps=opts.inner_steps,
        num_tasks=opts.num_tasks,
        seed=opts.seed,
    )
    return {
        "shots": opts.shots,
        "inner_steps": opts.inner_steps,
        "num_tasks": opts.num_tasks,
        "inner_lr": "learned" if isinstance(inner_lr, dict) else inner_lr,
        **figures,
    }


_SINE_TEXT = {
    "maml": "MAML (second order) on sinusoid regression",
    "fomaml": "first-order MAML on sinusoid regression",
    "metasgd": "Meta-SGD (learned per-parameter step sizes) on sinusoid regression",
    "reptile": "Reptile (batched) on sinusoid regression",
    "pretrain": "baseline: one network trained on all sinusoids jointly, fine-tuned at test time",
}

EXPERIMENTS: dict[str, Experiment] = {
    name: Experiment(
        name=name,
        description=_SINE_TEXT[defaults["algorithm"]],
        config_cls=sine.SineConfig,
        make_learner=sine.SineLearner,
        add_eval_args=_sine_eval_args,
        evaluate=_sine_evaluate,
        defaults=defaults,
    )
    for name, defaults in sine.EXPERIMENTS.items()
}


def _chars_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-way", type=positive_int, default=5, help="classes per episode (N)")
    parser.add_argument(
        "--k-shot", type=positive_int, default=1, help="support images per class (K)"
    )
    parser.add_argument("--episodes", type=positive_int, default=1000, help="held-out episodes")
    parser.add_argument("--k-query", type=positive_int, default=15, help="query images per class")
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="classes to draw from: test (held out), val or train",
    )
    parser.add_argument(
        "--inner-steps",
        type=nonnegative_int,
        default=None,
        help="MAML/ANIL: test-time adaptation steps (default: the run's eval_inner_steps)",
    )
    parser.add_argument("--seed", type=int, default=chars.EVAL_SEED, help="seed of the episodes")


def _chars_evaluate(learner: chars.CharsLearner, opts: argparse.Namespace) -> dict:
    figures = chars.evaluate(
        learner,
        n_way=opts.n_way,
        k_shot=opts.k_shot,
        episodes=opts.episodes,
        k_query=opts.k_query,
        split=opts.split,
        seed=opts.seed,
        inner_steps=opts.inner_steps,
    )
    return {
        "dataset": learner.config.dataset,
        "n_way": opts.n_way,
        "k_shot": opts.k_shot,
        "episodes": opts.episodes,
        "split": opts.split,
        **figures,
    }


EXPERIMENTS.update(
    {
        name: Experiment(
            name=name,
            description=chars.DESCRIPTIONS[defaults["algorithm"]],
            config_cls=chars.CharsConfig,
            make_learner=chars.CharsLearner,
            add_eval_args=_chars_eval_args,
            evaluate=_chars_evaluate,
            defaults=defaults,
        )
        for name, defaults in chars.EXPERIMENTS.items()
    }
)


def _rl2_bandit_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arms", type=positive_int, default=None, help="k (default: the run's)")
    parser.add_argument("--pulls", type=positive_int, default=None, help="n (default: the run's)")
    parser.add_argument(
        "--episodes", type=positive_int, default=1000, help="held-out bandits (trials)"
    )
    _rl2_common_eval_args(parser)


def _rl2_mdp_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--episodes-per-trial", type=positive_int, default=None, help="n (default: the run's)"
    )
    parser.add_argument("--trials", type=positive_int, default=1000, help="held-out MDPs (trials)")
    _rl2_common_eval_args(parser)


def _rl2_common_eval_args(parser) -> None:
    parser.add_argument("--greedy", action="store_true", help="most likely action, no sampling")
    parser.add_argument("--seed", type=int, default=rl2.EVAL_SEED, help="seed of the tasks")


def _rl2_evaluate(learner: rl2.RL2Learner, opts: argparse.Namespace) -> dict:
    c = learner.config
    if c.task == "bandit":
        sizes = {
            "num_arms": opts.arms if opts.arms is not None else c.num_arms,
            "num_pulls": opts.pulls if opts.pulls is not None else c.num_pulls,
        }
        trials = opts.episodes
    else:
        n = opts.episodes_per_trial
        sizes = {"num_episodes": n if n is not None else c.num_episodes}
        trials = opts.trials
    config = dataclasses.replace(c, **sizes)
    figures = rl2.evaluate(
        learner.policy, config, num_trials=trials, seed=opts.seed, greedy=opts.greedy
    )
    return {**sizes, "trials": trials, "greedy": opts.greedy, **figures}


EXPERIMENTS.update(
    {
        name: Experiment(
            name=name,
            description=rl2.DESCRIPTIONS[defaults["task"]],
            config_cls=rl2.RL2Config,
            make_learner=rl2.RL2Learner,
            add_eval_args=_rl2_bandit_eval_args
            if defaults["task"] == "bandit"
            else _rl2_mdp_eval_args,
            evaluate=_rl2_evaluate,
            defaults=defaults,
        )
        for name, defaults in rl2.EXPERIMENTS.items()
    }
)


def _nav_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inner-steps", type=nonnegative_int, default=3, help="adaptation steps")
    parser.add_argument(
        "--trajectories", type=positive_int, default=40, help="trajectories per goal"
    )
    parser.add_argument("--goals", type=positive_int, default=40, help="held-out goals")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="evaluate the run's initial parameters instead (the random-initialisation baseline)",
    )
    parser.add_argument("--seed", type=int, default=maml_rl.EVAL_SEED, help="seed of the goals")
    parser.add_argument(
        "--later-inner-lr",
        type=nonnegative_float,
        default=None,
        help="step size of the steps after the first (default: half the run's inner_lr, as in"
        " the MAML paper's test script)",
    )


def _nav_evaluate(learner: maml_rl.NavLearner, opts: argparse.Namespace) -> dict:
    figures = maml_rl.evaluate_learner(
        learner,
        inner_steps=opts.inner_steps,
        num_trajectories=opts.trajectories,
        num_goals=opts.goals,
        seed=opts.seed,
        untrained=opts.untrained,
        later_inner_lr=opts.later_inner_lr,
    )
    return {
        "inner_steps": opts.inner_steps,
        "trajectories": opts.trajectories,
        "goals": opts.goals,
        "untrained": opts.untrained,
        **figures,
    }


EXPERIMENTS.update(
    {
        name: Experiment(
            name=name,
            description=maml_rl.DESCRIPTIONS[defaults["algorithm"]],
            config_cls=maml_rl.NavConfig,
            make_learner=maml_rl.NavLearner,
            add_eval_args=_nav_eval_args,
            evaluate=_nav_evaluate,
            defaults=defaults,
        )
        for name, defaults in maml_rl.EXPERIMENTS.items()
    }
)


def _metagenrl_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        default="pendulum",
        help=f"environment family to train fresh agents on: one of {', '.join(metagenrl.ENVS)}",
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="agents per objective")
    parser.add_argument(
        "--steps", type=positive_int, default=20_000, help="environment steps per agent"
    )


def _metagenrl_evaluate(learner: metagenrl.MetaGenRLLearner, opts: argparse.Namespace) -> dict:
    figures = metagenrl.meta_test(
        learner.objective, opts.env, seeds=opts.seeds, steps=opts.steps, device=learner.device
    )
    return {"meta_trained_on": learner.config.env_names, **figures}


EXPERIMENTS["metagenrl"] = Experiment(
    name="metagenrl",
    description=metagenrl.DESCRIPTIONS["metagenrl"],
    config_cls=metagenrl.MetaGenRLConfig,
    make_learner=metagenrl.MetaGenRLLearner,
    add_eval_args=_metagenrl_eval_args,
    evaluate=_metagenrl_evaluate,
)


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
    ``init_from``: a run of the same experiment whose weights start this one."""
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
        exp.make_learner,
        config,
        out,
        device=device,
        max_seconds=max_seconds,
        resume=resume,
        progress=progress,
        init_from=init_from,
    )


def _shipped_learner(exp: Experiment, shipped: str, device):
    """A fresh learner of ``exp`` holding the weights of the policy the course ships as
    ``shipped``, and a state with the iterations it was trained for."""
    saved = shipped_policy_for(exp.name, shipped, "--checkpoint")
    if not hasattr(exp.make_learner, "load_weights"):
        raise ValueError(
            f"--checkpoint {shipped}: '{exp.name}' evaluates run folders only; train one with "
            f"`mlcourse train {exp.name} --out DIR`, or load {shipped} in Python with the "
            "module's load_pretrained"
        )
    learner = exp.make_learner(make_config(exp.config_cls, saved["config"]), device)
    learner.load_weights({"policy": saved["policy"]}, source=f"shipped {shipped}")
    return learner, {"step": saved["steps"], "shipped": shipped}


def load_learner(name: str, checkpoint: str | Path, device=None):
    """Rebuilds the learner of a finished (or interrupted) run from its checkpoint.

    ``checkpoint`` is a run folder, or the name of a policy of this experiment that the course
    ships (e.g. ``rl2-bandit-k5-n10``): its weights in a fresh learner, with a state that
    holds ``step`` (the iterations it was trained for) and ``shipped`` (its name)."""
    exp = get(name)
    device = resolve_device(device)
    if not Path(checkpoint).exists():  # not a run folder: a policy the course ships?
        return _shipped_learner(exp, str(checkpoint), device)
    state = load_checkpoint(checkpoint, device)
    if state["experiment"] != name:
        raise ValueError(f"{checkpoint} holds a '{state['experiment']}' run, not '{name}'")
    learner = exp.make_learner(make_config(exp.config_cls, state["config"]), device)
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
        **get(name).evaluate(learner, opts),
    }
