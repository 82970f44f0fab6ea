"""The training loop every experiment shares: progress bar, checkpoints, resume, NaN guard.

An experiment provides a *learner*: an object with ``step(step_index) -> loss tensor``,
``state_dict()``, ``load_state_dict(state)`` and ``parameters()``, and optionally
``metrics() -> dict`` of figures added to each log line (e.g. RL²'s mean trial return) and
``load_weights(state, source)`` to start from another run's weights (``init_from``).
:func:`train` runs it for ``config.steps`` steps or until a time budget runs out, saving a
checkpoint every ``checkpoint_every`` seconds, so an interrupted run (a Colab disconnect,
Ctrl-C) loses at most that much and continues with ``resume=True`` exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint.pt"
SHOWN_METRICS = ("trial_return",)  # learner metrics also shown on the progress bar


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN or infinite during training."""


def make_adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fastest implementation the parameters' device supports.

    The fused kernel updates every parameter in one call (CPU, CUDA and MPS in recent
    PyTorch); elsewhere the ``foreach`` implementation is used. Both compute the same update.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def make_config(config_cls, overrides: dict[str, Any]):
    """Builds a config, rejecting unknown field names with the list of known ones."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; this experiment takes {sorted(known)}")
    return config_cls(**overrides)


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / CHECKPOINT


def save_checkpoint(path: Path, payload: dict) -> None:
    """Writes atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(out: str | Path, device: torch.device | str | None = None) -> dict:
    """Loads ``DIR/checkpoint.pt``, with a clear error when it is missing or unreadable."""
    path = checkpoint_path(out)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train one first with `mlcourse train EXPERIMENT --out {out}`"
        )
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise RuntimeError(
            f"{path} is not a readable checkpoint ({err}). Delete it and train again."
        ) from err


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def train(
    experiment: str,
    make_learner: Callable[[Any, torch.device], Any],
    config,
    out: str | Path,
    *,
    device: torch.device | str | None = None,
    max_seconds: float | None = None,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> dict:
    """Runs (or resumes) a training run and leaves a checkpoint in ``out``.

    Args:
        experiment: the experiment's name, stored in the checkpoint.
        make_learner: ``make_learner(config, device) -> learner``.
        config: a config dataclass with at least ``steps``, ``checkpoint_every`` (seconds) and
            ``log_every`` (steps).
        out: the run's folder (``checkpoint.pt``, ``config.json``, ``log.jsonl``).
        device: where to train (default: CUDA if available, else CPU).
        max_seconds: stop (with a checkpoint) after this much training time in this call.
        resume: continue from the checkpoint in ``out``; ``config.steps`` may be raised.
        progress: show a tqdm progress bar.
        init_from: a finished run of the same experiment whose weights (not its optimizer
            state, step count or schedule) start this one, e.g. to fine-tune a policy trained
            on short trials on longer ones. The learner must have ``load_weights(state)``.

    Returns:
        A summary dict: ``experiment, step, steps, seconds, loss, out``.

    Raises:
        TrainingDiverged: the loss or parameters became NaN or infinite; the last good
            checkpoint is kept.
    """
    out = Path(out)
    device = torch.device(device) if device is not None else default_device()
    ckpt = checkpoint_path(out)
    learner = make_learner(config, device)
    step, seconds = 0, 0.0
    origin = None  # where the starting weights came from: {"run": ..., "step": ...}
    if resume:
        if init_from is not None:
            raise ValueError(
                "--init-from starts a new run; it cannot be combined with --resume "
                "(the resumed run already records where its weights came from)"
            )
        state = load_checkpoint(out, device)
        if state["experiment"] != experiment:
            raise ValueError(f"{ckpt} holds a '{state['experiment']}' run, not '{experiment}'")
        learner.load_state_dict(state["learner"])
        step, seconds = state["step"], state["seconds"]
        origin = state.get("init_from")
    elif ckpt.exists():
        raise FileExistsError(
            f"{out} already holds a checkpoint: pass --resume to continue it, "
            "or choose another --out"
        )
    elif init_from is not None:
        origin = _load_initial_weights(learner, experiment, init_from, device)
    out.mkdir(parents=True, exist_ok=True)
    record = {"experiment": experiment, **dataclasses.asdict(config)}
    if origin is not None:
        record["init_from"] = origin
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")

    t0 = time.perf_counter()
    base_seconds = seconds

    def save() -> None:
        if not _all_finite(learner.parameters()):
            raise TrainingDiverged(_diverged_message(step, ckpt))
        save_checkpoint(
            ckpt,
            {
                "experiment": experiment,
                "config": dataclasses.asdict(config),
                "step": step,
                "seconds": base_seconds + time.perf_counter() - t0,
                "learner": learner.state_dict(),
                **({"init_from": origin} if origin is not None else {}),
            },
        )

    last_save = t0
    loss_sum, loss_count, last_loss = torch.zeros((), device=device), 0, math.nan
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=experiment,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        with open(out / "log.jsonl", "a") as log:
            while step < config.steps:
                if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                    break
                loss = learner.step(step)
                loss_sum += loss.detach()
                loss_count += 1
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    last_loss = loss_sum.item() / loss_count
                    if not math.isfinite(last_loss):
                        raise TrainingDiverged(_diverged_message(step, ckpt))
                    elapsed = base_seconds + time.perf_counter() - t0
                    extra = learner.metrics() if hasattr(learner, "metrics") else {}
                    line = {"step": step, "loss": last_loss, "seconds": round(elapsed, 3)}
                    log.write(json.dumps({**line, **extra}) + "\n")
                    log.flush()
                    shown = {k: f"{v:.4g}" for k, v in extra.items() if k in SHOWN_METRICS}
                    bar.set_postfix(loss=f"{last_loss:.4g}", **shown)
                    loss_sum.zero_()
                    loss_count = 0
                if time.perf_counter() - last_save >= config.checkpoint_every:
                    save()
                    last_save = time.perf_counter()
        if loss_count:  # steps since the last log line
            last_loss = loss_sum.item() / loss_count
            if not math.isfinite(last_loss):
                raise TrainingDiverged(_diverged_message(step, ckpt))
        save()
    except KeyboardInterrupt:
        save()
        raise
    finally:
        bar.close()
    seconds = base_seconds + time.perf_counter() - t0
    return {
        "experiment": experiment,
        "step": step,
        "steps": config.steps,
        "seconds": round(seconds, 2),
        "loss": None if math.isnan(last_loss) else last_loss,  # None: no step was taken
        "out": str(out),
    }


def _load_initial_weights(learner, experiment: str, init_from, device) -> dict:
    """Loads the weights of ``init_from`` (a run folder, or the name of a policy the course ships)
    into ``learner``; returns where they came from."""
    if not hasattr(learner, "load_weights"):
        raise ValueError(
            f"'{experiment}' cannot start from another run's weights (--init-from); "
            "train it from scratch or --resume one of its runs"
        )
    if not Path(init_from).is_dir():  # not a run folder: a policy the course ships?
        saved = shipped_policy_for(experiment, str(init_from), "--init-from")
        learner.load_weights({"policy": saved["policy"]}, source=f"shipped {init_from}")
        return {"shipped": str(init_from), "step": saved["steps"]}
    state = load_checkpoint(init_from, device)
    if state["experiment"] != experiment:
        raise ValueError(
            f"--init-from {init_from} holds a '{state['experiment']}' run; "
            f"'{experiment}' can only start from a '{experiment}' run"
        )
    learner.load_weights(state["learner"], source=str(init_from))
    return {"run": str(init_from), "step": state["step"]}


def _diverged_message(step: int, ckpt: Path) -> str:
    kept = (
        f"the last good checkpoint is kept in {ckpt}"
        if ckpt.exists()
        else "no checkpoint was written"
    )
    return (
        f"training diverged at step {step}: the loss or the parameters became NaN or infinite "
        f"({kept}). Lower the learning rates (--meta-lr, --inner-lr) and train again."
    )


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restores a saved random-number state into ``generator``.

    A state saved by a generator of another device type (a run trained on a GPU, resumed or
    evaluated on a CPU, or the reverse) cannot be restored: the generator is then seeded from
    the saved state instead, deterministically, with a warning that the random stream differs.
    """
    state = state.cpu()
    try:
        generator.set_state(state)
    except RuntimeError:
        generator.manual_seed(int(state.to(torch.int64).sum()))
        warnings.warn(
            f"this checkpoint's random-number state comes from another kind of device than "
            f"{generator.device.type}; continuing with a stream seeded from it, so a resumed "
            "run will not repeat the original device's samples exactly",
            stacklevel=2,
        )


PRETRAINED_DIR = "pretrained"  # inside the package: policies the course ships


def export_policy(
    run: str | Path, path: str | Path, experiments, kind: str, note: str = "", key="policy"
) -> dict:
    """Writes the policy of a finished run as a small file: its config, its weights and how it
    was trained. ``experiments`` are the names the run may hold (``kind`` names them in the
    error); ``key`` is the learner's entry that holds the weights (stored under ``"policy"``).
    Returns what was written, without the weights."""
    state = load_checkpoint(run, "cpu")
    if state["experiment"] not in experiments:
        raise ValueError(f"{run} holds a '{state['experiment']}' run, not {kind} one")
    info = {
        "experiment": state["experiment"],
        "config": state["config"],
        "steps": state["step"],
        "seconds": round(state["seconds"], 1),
        "note": note,
    }
    torch.save({**info, "policy": state["learner"][key]}, path)
    return info


def shipped_policies(prefix: str = "", suffix: str = ".pt") -> list[str]:
    """Names of the policies shipped in ``mlcourse/pretrained/`` whose file names start with
    ``prefix`` and end with ``suffix``."""
    from importlib.resources import files

    folder = files("mlcourse") / PRETRAINED_DIR
    return sorted(
        p.name[:-3]
        for p in folder.iterdir()
        if p.is_file() and p.name.startswith(prefix) and p.name.endswith(suffix)
    )


def read_shipped_policy(name: str, names: list[str], what: str) -> dict:
    """The saved file of shipped policy ``name`` (one of ``names``), read onto the CPU."""
    from importlib.resources import as_file, files

    if name not in names:
        raise KeyError(f"no {what} {name!r}; the course ships {names}")
    with as_file(files("mlcourse") / PRETRAINED_DIR / f"{name}.pt") as path:
        return torch.load(path, map_location="cpu", weights_only=False)


def shipped_policy_for(experiment: str, name: str, option: str) -> dict:
    """The saved file of the shipped policy ``name``, checked to be one of ``experiment``.
    ``option`` (``--init-from``, ``--checkpoint``) is the command-line option that named it, for
    the errors: a name the course does not ship, or a policy of another experiment."""
    shipped = shipped_policies()
    if name not in shipped:
        own = [n for n in shipped if n.startswith(experiment + "-")]
        hint = f", or name one it ships for {experiment} ({', '.join(own)})" if own else ""
        raise FileNotFoundError(
            f"{option} {name}: no such run folder, and the course ships no policy of that "
            f"name. Train one with `mlcourse train {experiment} --out {name}`{hint}"
        )
    saved = read_shipped_policy(name, shipped, "shipped policy")
    if saved["experiment"] != experiment:
        raise ValueError(
            f"{option} {name} is a shipped '{saved['experiment']}' policy; "
            f"'{experiment}' can only use a '{experiment}' one"
        )
    return saved


def default_device() -> torch.device:
    """CUDA when available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
