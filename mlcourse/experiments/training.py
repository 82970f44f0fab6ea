"""The training loop every experiment shares: progress bar, checkpoints, resume, NaN guard.

An experiment provides a *learner* (:class:`mlcourse.experiments.learner.Learner`):
``step(step_index) -> loss tensor``, ``metrics()`` (figures added to each log line, e.g. RL²'s
mean trial return), ``state_dict()`` / ``load_state_dict(state)``, ``parameters()`` and
``load_weights`` (to start from another run's weights, ``init_from``). :func:`train` runs it
for ``config.steps`` steps or until a time budget runs out, saving a checkpoint after the first
step, every ``checkpoint_every`` seconds and when interrupted, so a stopped run (a Colab
disconnect, Ctrl-C, ``kill -9``) loses at most that much and continues with ``resume=True``
exactly where it stopped. Checkpoints are loaded with ``weights_only=True``: tensors and plain
values, never pickled code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mlcourse.options import OptionError, flag

# Of these, only resolve_device and safe_load are used here. The others lived in this module
# before mlcourse.runtime, and notebooks released earlier import them from it by its old name
# (``from mlcourse.training import default_device``).
from mlcourse.runtime import (  # noqa: F401
    DeviceUnavailable,
    UnsafeCheckpoint,
    default_device,
    make_adam,
    resolve_device,
    restore_generator,
    safe_load,
)

CHECKPOINT = "checkpoint.pt"
SHOWN_METRICS = ("trial_return",)  # learner metrics also shown on the progress bar


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN or infinite during training."""


def make_config(config_cls, overrides: dict[str, Any]):
    """Builds a config, rejecting unknown field names with the list of known ones."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; this experiment takes {sorted(known)}")
    return config_cls(**overrides)


def checkpoint_path(out: str | Path) -> Path:
    """The checkpoint of a run: ``out/checkpoint.pt`` for a run folder; a file is itself."""
    out = Path(out)
    return out if out.is_file() else out / CHECKPOINT


def save_checkpoint(path: Path, payload: dict) -> None:
    """Writes atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_CHECKPOINT_ENTRIES = {"experiment": str, "config": dict, "step": int, "learner": dict}


def load_checkpoint(out: str | Path, device: torch.device | str | None = None) -> dict:
    """Loads a run's checkpoint: ``out`` is the run folder (or its ``checkpoint.pt`` itself).

    Only tensors and plain values are read (see :func:`mlcourse.runtime.safe_load`); missing,
    unreadable, unsafe and foreign files each raise an error that says what to do.
    """
    path = checkpoint_path(out)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train one first with `mlcourse train EXPERIMENT --out {out}`"
        )
    state = safe_load(path, device)
    wrong = [
        k
        for k, kind in _CHECKPOINT_ENTRIES.items()
        if not isinstance(state, dict) or not isinstance(state.get(k), kind)
    ]
    if wrong:
        raise RuntimeError(
            f"{path} is not a checkpoint written by `mlcourse train` (it has no valid "
            f"{', '.join(repr(k) for k in wrong)}): give the folder of a run that "
            "`mlcourse train` wrote"
        )
    return state


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class RunInUse(RuntimeError):
    """Another training process is writing to the same run folder."""


LOCK = ".lock"


@contextlib.contextmanager
def run_lock(out: Path):
    """Holds ``out/.lock`` for the duration: a second training process on the same folder is
    refused instead of both writing. The operating system releases the lock when its process
    ends, however it ends (even ``kill -9``), so a stale lock never blocks a resume. Where
    ``fcntl`` does not exist (Windows), no lock is taken."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(out / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise RunInUse(
                f"another training process (pid {pid}) is writing to {out}: wait for it to "
                "finish or stop it, or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Interrupted(KeyboardInterrupt):
    """Training stopped at a signal (SIGINT, SIGTERM) after saving a checkpoint.

    Attributes:
        signum: the signal's number.
        step: the step the checkpoint holds.
        out: the run folder.
    """

    def __init__(self, signum: int, step: int, out: Path):
        self.signum, self.step, self.out = signum, step, out
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}; the checkpoint in {out} holds it: continue "
            "with --resume"
        )


class _StopOnSignal:
    """While active (in the main thread), the first SIGINT or SIGTERM only asks the training
    loop to stop after the step under way, so that the checkpoint it then saves is consistent;
    a second one interrupts at once (the last checkpoint is kept)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # pragma: no cover - an embedded interpreter
                    pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _lr_flags(config) -> str:
    names = [
        f.name
        for f in dataclasses.fields(config)
        if isinstance(f.default, float) and (f.name == "lr" or f.name.endswith("_lr"))
    ]
    return ", ".join(flag(n) for n in sorted(names)) or "the step sizes"


def _trim_log(path: Path, step: int) -> float | None:
    """Cuts ``log.jsonl`` back to the lines of steps up to ``step`` (those after a checkpoint
    are written again when training continues); returns the last kept line's loss."""
    if not path.exists():
        return None
    kept, loss = [], None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
            loss = row.get("loss")
    _write_text_atomically(path, "".join(k + "\n" for k in kept))
    return loss


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

    A checkpoint is saved after the first step, then every ``config.checkpoint_every``
    seconds, at the end, and when SIGINT (Ctrl-C, a notebook's stop button) or SIGTERM
    arrives: the step under way finishes, the checkpoint is saved and :class:`Interrupted` is
    raised. A killed run (``kill -9``, an out-of-memory kill) loses at most the steps since its
    last checkpoint; resumed, it continues exactly as if it had not stopped, and its log is cut
    back to the checkpoint so that every step is logged once. One process at a time may train
    into ``out`` (:func:`run_lock`).

    Args:
        experiment: the experiment's name, stored in the checkpoint.
        make_learner: ``make_learner(config, device) -> learner``.
        config: a config dataclass with at least ``steps``, ``checkpoint_every`` (seconds) and
            ``log_every`` (steps).
        out: the run's folder (``checkpoint.pt``, ``config.json``, ``log.jsonl``).
        device: where to train (default: CUDA if available, else CPU).
        max_seconds: stop (with a checkpoint) after this much training time in this call; 0
            saves the starting point (e.g. the weights of ``init_from``) without training.
        resume: continue the run in ``out``; ``config.steps`` may be raised. A run that
            stopped before its first checkpoint starts again from step 0.
        progress: show a tqdm progress bar.
        init_from: a finished run of the same experiment whose weights (not its optimizer
            state, step count or schedule) start this one, e.g. to fine-tune a policy trained
            on short trials on longer ones. The learner must have ``load_weights(state)``.

    Returns:
        A summary dict: ``experiment, step, steps, seconds, loss, out``, and
        ``already_finished: True`` when a resumed run had nothing left to do.

    Raises:
        TrainingDiverged: the loss or parameters became NaN or infinite; the last good
            checkpoint is kept.
        Interrupted: SIGINT or SIGTERM stopped the run; its checkpoint is saved.
    """
    out = Path(out)
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds >= 0):
        raise OptionError(
            f"max_seconds (--max-seconds) must be a number of seconds of at least 0 (0 saves "
            f"the starting point without training), got {max_seconds}"
        )
    if resume and init_from is not None:
        raise ValueError(
            "--init-from starts a new run; it cannot be combined with --resume "
            "(the resumed run already records where its weights came from)"
        )
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give the folder of the run")
    if resume and not out.is_dir():
        raise FileNotFoundError(
            f"no run at {out} to resume: start one with `mlcourse train {experiment} --out {out}`"
        )
    device = resolve_device(device)
    created = not out.exists()
    try:
        with run_lock(out):
            return _train_locked(
                experiment, make_learner, config, out, device, max_seconds, resume, progress,
                init_from,
            )  # fmt: skip
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {LOCK}:  # a run that never began
            (out / LOCK).unlink(missing_ok=True)
            out.rmdir()
        raise


def _train_locked(
    experiment, make_learner, config, out, device, max_seconds, resume, progress, init_from
) -> dict:
    ckpt = out / CHECKPOINT
    step, seconds, state = 0, 0.0, None
    origin = None  # where the starting weights came from: {"run": ...} or {"shipped": ...}
    if resume and ckpt.exists():
        state = load_checkpoint(out, device)
        if state["experiment"] != experiment:
            raise ValueError(f"{ckpt} holds a '{state['experiment']}' run, not '{experiment}'")
        step, seconds = state["step"], float(state.get("seconds", 0.0))
        origin = state.get("init_from")
        if step > config.steps:
            raise OptionError(
                f"the run in {out} is already at step {step}, past --steps {config.steps}: give "
                f"a --steps above {step} to train it further"
            )
        if step == config.steps:
            loss = _trim_log(out / "log.jsonl", step)
            return {
                "experiment": experiment,
                "step": step,
                "steps": config.steps,
                "seconds": round(seconds, 2),
                "loss": loss,
                "out": str(out),
                "already_finished": True,
            }
    elif resume:  # the run stopped before its first checkpoint: start it again
        record = _saved_record(out)
        if record.get("experiment") != experiment:
            raise FileNotFoundError(
                f"no checkpoint at {ckpt} to resume: start the run with "
                f"`mlcourse train {experiment} --out {out}`"
            )
        origin = record.get("init_from")
        if origin is not None:
            init_from = origin.get("run", origin.get("shipped"))
    elif ckpt.exists():
        raise FileExistsError(
            f"{out} already holds a checkpoint: pass --resume to continue it, "
            "or choose another --out"
        )
    learner = make_learner(config, device)
    if state is not None:
        learner.load_state_dict(state["learner"])
    elif init_from is not None:
        origin = _load_initial_weights(learner, experiment, init_from, device)
    record = {"experiment": experiment, **dataclasses.asdict(config)}
    if origin is not None:
        record["init_from"] = origin
    _write_text_atomically(out / "config.json", json.dumps(record, indent=2) + "\n")
    _trim_log(out / "log.jsonl", step)

    t0 = time.perf_counter()
    base_seconds = seconds
    saved_loss = (state or {}).get("loss_window", (0.0, 0))
    loss_sum = torch.tensor(float(saved_loss[0]), device=device)
    loss_count, last_loss = int(saved_loss[1]), math.nan

    def save() -> None:
        if not _all_finite(learner.parameters()):
            raise TrainingDiverged(_diverged_message(step, ckpt, config))
        save_checkpoint(
            ckpt,
            {
                "experiment": experiment,
                "config": dataclasses.asdict(config),
                "step": step,
                "seconds": base_seconds + time.perf_counter() - t0,
                "learner": learner.state_dict(),
                # the loss of the steps since the last log line, so that a resumed run logs
                # the same figures as an uninterrupted one
                "loss_window": (float(loss_sum.item()), loss_count),
                **({"init_from": origin} if origin is not None else {}),
            },
        )

    have_checkpoint = state is not None
    last_save = t0
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=experiment,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        with _StopOnSignal() as stop, open(out / "log.jsonl", "a") as log:
            while step < config.steps and stop.signum is None:
                if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                    break
                try:
                    loss = learner.step(step)
                except TrainingDiverged as err:
                    raise TrainingDiverged(_diverged_message(step + 1, ckpt, config)) from err
                loss_sum += loss.detach()
                loss_count += 1
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    last_loss = loss_sum.item() / loss_count
                    if not math.isfinite(last_loss):
                        raise TrainingDiverged(_diverged_message(step, ckpt, config))
                    elapsed = base_seconds + time.perf_counter() - t0
                    extra = learner.metrics()
                    line = {"step": step, "loss": last_loss, "seconds": round(elapsed, 3)}
                    log.write(json.dumps({**line, **extra}) + "\n")
                    log.flush()
                    shown = {k: f"{v:.4g}" for k, v in extra.items() if k in SHOWN_METRICS}
                    bar.set_postfix(loss=f"{last_loss:.4g}", **shown)
                    loss_sum.zero_()
                    loss_count = 0
                if (
                    not have_checkpoint
                    or time.perf_counter() - last_save >= config.checkpoint_every
                ):
                    save()
                    have_checkpoint, last_save = True, time.perf_counter()
            if loss_count:  # steps since the last log line
                last_loss = loss_sum.item() / loss_count
                if not math.isfinite(last_loss):
                    raise TrainingDiverged(_diverged_message(step, ckpt, config))
            save()
            if stop.signum is not None:
                raise Interrupted(stop.signum, step, out)
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


def saved_run(out: str | Path) -> tuple[str, dict]:
    """The experiment and config of the run in ``out``, read from its checkpoint or, for a run
    stopped before its first checkpoint, from its ``config.json``."""
    out = Path(out)
    if checkpoint_path(out).is_file():
        state = load_checkpoint(out, "cpu")
        return state["experiment"], state["config"]
    record = _saved_record(out) if out.is_dir() else {}
    if not isinstance(record.get("experiment"), str):
        load_checkpoint(out)  # raises the error that says there is no checkpoint
    fields = {k: v for k, v in record.items() if k not in ("experiment", "init_from")}
    return record["experiment"], fields


def _saved_record(out: Path) -> dict:
    """The ``config.json`` a run folder holds (``{}`` when it holds none)."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RuntimeError(
            f"{path} is damaged and {out} holds no checkpoint: start the run again with "
            "another --out"
        ) from None
    return record if isinstance(record, dict) else {}


def _load_initial_weights(learner, experiment: str, init_from, device) -> dict:
    """Loads the weights of ``init_from`` (a run folder, or a shipped agent of
    :mod:`mlcourse.pretrained`) into ``learner``; returns where they came from."""
    if not Path(init_from).exists():  # not a run folder: an agent the course ships?
        from mlcourse import pretrained  # (which reads its files with this module's safe_load)

        agent = pretrained.load_for(experiment, str(init_from), "--init-from")
        learner.load_weights(agent.weights, source=f"shipped {agent.name}")
        return {"shipped": agent.name, "step": agent.steps}
    state = load_checkpoint(init_from, device)
    if state["experiment"] != experiment:
        raise ValueError(
            f"--init-from {init_from} holds a '{state['experiment']}' run; "
            f"'{experiment}' can only start from a '{experiment}' run"
        )
    learner.load_weights(state["learner"], source=str(init_from))
    return {"run": str(init_from), "step": state["step"]}


def _diverged_message(step: int, ckpt: Path, config) -> str:
    kept = (
        f"the last good checkpoint is kept in {ckpt}"
        if ckpt.exists()
        else "no checkpoint was written"
    )
    return (
        f"training diverged at step {step}: the loss or the parameters became NaN or infinite "
        f"({kept}). Lower the learning rates ({_lr_flags(config)}) and train again."
    )
