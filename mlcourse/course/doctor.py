"""``mlcourse doctor``: what this machine has, and what will be slow or missing."""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib import metadata

import torch

from mlcourse import __version__

PACKAGES = (
    "torch",
    "numpy",
    "matplotlib",
    "ipywidgets",
    "gymnasium",
    "tqdm",
    "jupyterlab",
    "jupyterlab_widgets",
    "nbval",
    "pytest",
)
MIN_TORCH = (2, 4)
SMALL_MACHINE_CORES = 4  # up to this many cores, several torch threads tend to hurt


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _device() -> dict:
    if torch.cuda.is_available():
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        }
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"type": "mps", "name": "Apple GPU (Metal)"}
    return {"type": "cpu", "name": platform.processor() or platform.machine()}


def _widgets(packages: dict) -> dict:
    try:
        in_colab = importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        in_colab = False
    has_lib = packages.get("ipywidgets") is not None
    frontend = packages.get("jupyterlab_widgets") is not None
    return {
        "ipywidgets": packages.get("ipywidgets"),
        "frontend_extension": frontend,
        "colab": in_colab,
        "will_render": has_lib and (frontend or in_colab),
    }


def report() -> dict:
    """Everything ``mlcourse doctor`` prints, as a dict."""
    packages = {name: _version(name) for name in PACKAGES}
    device = _device()
    widgets = _widgets(packages)
    warnings = []
    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if torch_version < MIN_TORCH:
        warnings.append(
            f"torch {torch.__version__} is older than 2.4, which the course needs "
            "(torch.func); upgrade with `pip install -U torch`"
        )
    if device["type"] == "cpu":
        warnings.append(
            "no GPU: everything runs on the CPU. Lessons are sized for it; the full "
            "paper reproductions (docs/reproductions.md) take longer than on a GPU."
        )
    cores = os.cpu_count() or 1
    if device["type"] == "cpu" and cores <= SMALL_MACHINE_CORES and torch.get_num_threads() > 1:
        warnings.append(
            f"torch uses {torch.get_num_threads()} threads on {cores} cores: the course's small "
            "networks train fastest on one thread, and several threads on a small shared "
            "machine can slow training many times over. Run `mlcourse train` with "
            "OMP_NUM_THREADS=1 (the lessons call torch.set_num_threads(1) themselves)."
        )
    if cores < 2:
        warnings.append("only one CPU core: training in the lessons will be about twice as slow")
    if not widgets["will_render"]:
        what = "ipywidgets" if not widgets["ipywidgets"] else "jupyterlab_widgets"
        warnings.append(
            f"interactive widgets will not render ({what} is missing): lessons show "
            f"static figures instead; `pip install {what}` to get the sliders"
        )
    for name in ("numpy", "matplotlib", "gymnasium", "tqdm"):
        if packages[name] is None:
            warnings.append(f"{name} is missing: `pip install {name}`")
    return {
        "mlcourse": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "device": device,
        "cpu": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "widgets": widgets,
        "fast_mode": os.environ.get("MLCOURSE_FAST") == "1",
        "warnings": warnings,
    }


def format_report(rep: dict) -> str:
    """The human-readable form of :func:`report`."""
    dev = rep["device"]
    lines = [
        f"mlcourse {rep['mlcourse']} on Python {rep['python']} ({rep['platform']})",
        f"device     {dev['type']}: {dev['name']}",
        f"cpu        {rep['cpu']['cores']} cores, torch uses {rep['cpu']['torch_threads']} threads",
        "widgets    "
        + ("will render" if rep["widgets"]["will_render"] else "will NOT render")
        + (" (Colab)" if rep["widgets"]["colab"] else ""),
        "packages",
    ]
    lines += [f"  {name:<20}{ver or 'missing'}" for name, ver in rep["packages"].items()]
    if rep["warnings"]:
        lines.append("warnings")
        lines += [f"  ! {w}" for w in rep["warnings"]]
    else:
        lines.append("all good")
    return "\n".join(lines)
