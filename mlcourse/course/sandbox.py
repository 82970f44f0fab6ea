"""The sandbox a submission's kernel runs in while ``mlcourse grade`` scores it.

Each kernel starts inside `bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``):

- the only writable folder is that submission's scratch folder (a copy of the submission
  alone, the kernel's sockets, its home and temporary files); the system and the course's
  Python environment are mounted read-only, and nothing else of the file system is there (no
  other submissions, no ``solutions/``, no grader output);
- no network, and its own PID namespace: ``/proc`` shows neither the grader nor other kernels,
  and every process the submission starts (``setsid`` daemons included) is killed when its
  kernel is shut down (``--die-with-parent``: also when the grader itself dies);
- an address-space limit (``--memory``) set before the kernel starts.

Where ``bwrap`` is not installed the kernel runs unsandboxed with the memory limit still set,
and :func:`bwrap` returns None so that the grader can say so.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import mlcourse

DEFAULT_MEMORY = "4G"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str) -> int:
    """``"4G"`` → bytes (K, M, G, T are powers of 1024).

    >>> parse_memory("512M")
    536870912
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"memory must be a size such as 4G or 512M, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def bwrap() -> str | None:
    """The ``bwrap`` executable, or None when bubblewrap is not installed."""
    return shutil.which("bwrap")


def _python_mounts() -> list[str]:
    """Folders the course's Python needs, read-only: the interpreter, the environment's
    packages, and the ``mlcourse`` package itself (only it: for an editable install, the
    repository around it, with its ``solutions/``, stays outside)."""
    folders = {sys.base_prefix, sys.prefix, os.path.dirname(mlcourse.__file__)}
    folders |= {p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p}
    return sorted(os.path.realpath(f) for f in folders)


def _system_mounts() -> list[str]:
    args = []
    for top in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def limit_memory_argv(
    command: list[str], memory: int | None, forget_parent: bool = False
) -> list[str]:
    """``command`` started through a Python that first sets an address-space limit and, with
    ``forget_parent``, unsets ``JPY_PARENT_PID`` (in its own PID namespace a kernel would take
    its parent for dead and quit; bubblewrap's ``--die-with-parent`` watches the grader)."""
    if memory is None and not forget_parent:
        return command
    code = "import os, resource, sys\n"
    if memory is not None:
        code += f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
    if forget_parent:
        code += 'os.environ.pop("JPY_PARENT_PID", None)\n'
    code += "os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", code, *command]


def sandbox_argv(command: list[str], scratch: str | Path, memory: int | None) -> list[str]:
    """The command line that runs ``command`` (the kernel) in the sandbox described above, or
    only under the memory limit where ``bwrap`` is missing."""
    exe = bwrap()
    command = limit_memory_argv(command, memory, forget_parent=exe is not None)
    if exe is None:
        return command
    scratch = os.path.realpath(scratch)
    args = [exe, "--unshare-all", "--die-with-parent", "--new-session"]
    args += _system_mounts()
    # the private /tmp first: an environment or a checkout under /tmp is bound on top of it
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for folder in _python_mounts():
        args += ["--ro-bind", folder, folder]
    args += ["--bind", scratch, scratch, "--chdir", scratch]
    return [*args, "--", *command]


def sandbox_env(scratch: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: this one, with every folder a program writes to (home,
    temporary files, Matplotlib's and IPython's caches, Jupyter's) inside ``scratch``."""
    scratch = os.path.realpath(scratch)
    home = os.path.join(scratch, "home")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ if base is None else base)
    env.update(
        HOME=home,
        TMPDIR=os.path.join(scratch, "tmp"),
        MPLCONFIGDIR=os.path.join(home, ".matplotlib"),
        IPYTHONDIR=os.path.join(home, ".ipython"),
        JUPYTER_CONFIG_DIR=os.path.join(home, ".jupyter"),
        JUPYTER_DATA_DIR=os.path.join(home, ".jupyter-data"),
        JUPYTER_RUNTIME_DIR=os.path.join(scratch, "runtime"),
        XDG_CACHE_HOME=os.path.join(home, ".cache"),
        XDG_CONFIG_HOME=os.path.join(home, ".config"),
    )
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return env
