"""What every layer shares at run time: the device to compute on, the optimiser, random-number
state across devices, and loading files that may come from someone else without running code.

Algorithms, experiments, the pretrained store and the lessons use these; they import nothing else
from the package but :mod:`mlcourse.options`, so any module can.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from mlcourse.options import OptionError


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


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file holds pickled Python objects that loading could execute."""


def safe_load(path: str | Path, device: torch.device | str | None = None):
    """``torch.load`` restricted to tensors and plain values (``weights_only=True``).

    A file that holds any other pickled object (one whose loading could run code) is refused
    with :class:`UnsafeCheckpoint`, before anything in it runs; a truncated or foreign file
    raises RuntimeError. Both errors say what to do.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise UnsafeCheckpoint(
                f"refused to load {path}: besides tensors and plain values it holds a Python "
                f"object ({found.group(1)}) whose loading could run code on this machine. "
                "`mlcourse train` never writes such files: use only checkpoints you trust, or "
                "train your own"
            ) from None
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"{path} is not a readable checkpoint ({reason})") from None
    except Exception as err:  # a truncated or foreign file
        reason = str(err).split(". ")[0]
        raise RuntimeError(
            f"{path} is not a readable checkpoint ({reason}): the file is damaged or was not "
            "written by mlcourse"
        ) from err


class DeviceUnavailable(OptionError):
    """The device asked for does not exist on this machine."""


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` checked to be usable on this machine, or the best one there is when None.

    Raises:
        DeviceUnavailable: e.g. ``cuda`` on a machine without CUDA, with what to use instead.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceUnavailable(
            f"--device {device!r} is not a device: use cpu, cuda, cuda:1 or mps, or leave "
            "--device out to use the best one this machine has"
        ) from None
    instead = "use --device cpu, or leave --device out to use the best device this machine has"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this PyTorch was built without CUDA"
                if torch.version.cuda is None
                else ("PyTorch finds no NVIDIA GPU")
            )
            raise DeviceUnavailable(
                f"--device {device}: CUDA is not available here ({why}); {instead}"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0; {instead}"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailable(
                f"--device {device}: Apple's MPS is not available here; {instead}"
            )
    elif dev.type != "cpu":
        raise DeviceUnavailable(
            f"--device {device}: the course runs on cpu, cuda or mps; {instead}"
        )
    return dev


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


def default_device() -> torch.device:
    """CUDA when available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
