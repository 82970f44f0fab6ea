"""The course's diagrams, drawn with matplotlib so that they render wherever a figure does
(JupyterLab, Colab, a static page) with no file or network access.

Each function returns a ``Figure``; a lesson shows it with ``plt.show()``.

- :func:`bilevel_loop`: the inner and outer loops of meta-learning (lesson 01);
- :func:`maml_graph`: MAML's computation graph with its second-order path (lesson 02);
- :func:`prototype_space`: an embedding space with class prototypes (lesson 04);
- :func:`rl2_timeline`: an RL² trial, episode by episode, and where the hidden state is reset
  (lesson 06);
- :func:`side_by_side`: meta-learning and meta-RL with the same outer loop (lesson 09).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

INNER, OUTER, DATA, GRAD = "#dbe9f6", "#fde9d9", "#eeeeee", "#c0392b"


def _box(ax, x, y, text, color, width=2.2, height=0.8, fontsize=10):
    """A rounded box centred on (x, y) with ``text``; returns its (left, right, bottom, top)."""
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.05,rounding_size=0.15",
            facecolor=color,
            edgecolor="0.3",
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return x - width / 2, x + width / 2, y - height / 2, y + height / 2


def _arrow(ax, start, end, color="0.2", style="-|>", ls="-", rad=0.0, text=None, **text_kw):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=14,
            color=color,
            linestyle=ls,
            connectionstyle=f"arc3,rad={rad}",
            lw=1.4,
        )
    )
    if text:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        options = {"ha": "center", "va": "center", "fontsize": 9, "color": color, **text_kw}
        ax.text(*mid, text, **options)


def _canvas(width, height, xlim, ylim):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set(xlim=xlim, ylim=ylim)
    ax.axis("off")
    return fig, ax


def bilevel_loop() -> plt.Figure:
    """Meta-learning's two loops: per task, adapt θ on the support set (inner loop) and score
    the result on the query set; then move θ to lower the mean query loss (outer loop)."""
    fig, ax = _canvas(9, 4.6, (0, 12), (-0.8, 6))
    _box(ax, 1.3, 3.0, r"$\theta$" + "\nshared\ninitialisation", OUTER, width=2.0, height=1.6)
    for i, y in enumerate((4.8, 3.0, 1.2)):
        name = r"\tau_" + ("1" if i == 0 else "2" if i == 1 else "T")
        _box(ax, 4.2, y, f"support set\n$D^{{s}}_{{{name}}}$", DATA, width=1.9, height=0.95)
        _box(ax, 6.9, y, rf"$\phi_{{{name}}} = $adapt$(\theta, D^{{s}}_{{{name}}})$", INNER, 2.6)
        _box(ax, 9.9, y, rf"$\mathcal{{L}}(\phi_{{{name}}}, D^{{q}}_{{{name}}})$", DATA, 2.3)
        _arrow(ax, (2.3, 3.0), (3.25, y))
        _arrow(ax, (5.15, y), (5.6, y))
        _arrow(ax, (8.2, y), (8.75, y))
    ax.text(4.2, 2.1, "⋮", ha="center", fontsize=14)
    ax.text(6.9, 5.65, "inner loop: learn each task from its few examples", ha="center")
    _arrow(ax, (10.6, 0.65), (1.3, 2.15), color=GRAD, rad=-0.25)
    ax.text(
        6.0,
        -0.3,
        r"outer loop: $\theta \leftarrow \theta - \beta\,\nabla_\theta \frac{1}{T}"
        r"\sum_\tau \mathcal{L}(\phi_\tau, D^{q}_\tau)$",
        color=GRAD,
        ha="center",
        fontsize=11,
    )
    ax.text(10.2, 5.65, "query loss", ha="center")
    fig.tight_layout()
    return fig


def maml_graph() -> plt.Figure:
    """MAML's computation graph for two inner steps: the forward path from θ to the query
    loss; backwards, the second-order meta-gradient multiplies the Jacobians
    $I - \alpha H_k$ of the inner steps, and first-order MAML replaces each with $I$."""
    fig, ax = _canvas(10, 4.2, (0, 13.4), (0.2, 5.4))
    x = {"θ": 1.0, "φ1": 4.6, "φ2": 8.4, "L": 11.9}
    y = 2.8
    _box(ax, x["θ"], y, r"$\theta$", OUTER, width=1.2)
    _box(ax, x["φ1"], y, r"$\phi_1 = \theta - \alpha \nabla \mathcal{L}_S(\theta)$", INNER, 3.0)
    _box(ax, x["φ2"], y, r"$\phi_2 = \phi_1 - \alpha \nabla \mathcal{L}_S(\phi_1)$", INNER, 3.0)
    _box(ax, x["L"], y, r"$\mathcal{L}_Q(\phi_2)$", DATA, width=1.7)
    for a, b in (("θ", "φ1"), ("φ1", "φ2"), ("φ2", "L")):
        left = x[a] + (0.6 if a == "θ" else 1.5)
        right = x[b] - (0.85 if b == "L" else 1.5)
        _arrow(ax, (left, y), (right, y))
    ax.text(2.05, y + 0.15, "forward", fontsize=8, ha="center", va="bottom")
    back = [
        ("L", "φ2", r"$\nabla\mathcal{L}_Q(\phi_2)$"),
        ("φ2", "φ1", r"$I - \alpha H_1$"),
        ("φ1", "θ", r"$I - \alpha H_0$"),
    ]
    for a, b, label in back:
        _arrow(ax, (x[a], y + 0.45), (x[b], y + 0.45), color=GRAD, rad=0.45)
        ax.text((x[a] + x[b]) / 2, y + 1.55, label, color=GRAD, ha="center", fontsize=10)
        _arrow(ax, (x[a], y - 0.45), (x[b], y - 0.45), color="#1f77b4", rad=-0.45)
        low = label if a == "L" else r"$I$"
        ax.text((x[a] + x[b]) / 2, y - 1.6, low, color="#1f77b4", ha="center", fontsize=10)
    ax.text(
        6.7,
        5.1,
        r"second order: $\nabla_\theta = (I - \alpha H_0)(I - \alpha H_1)\,"
        r"\nabla\mathcal{L}_Q(\phi_2)$, $H_k = \nabla^2\mathcal{L}_S(\phi_k)$",
        color=GRAD,
        ha="center",
    )
    ax.text(
        6.7,
        0.35,
        r"first order (FOMAML): every $I - \alpha H_k$ taken as $I$: "
        r"$\nabla_\theta \approx \nabla\mathcal{L}_Q(\phi_2)$",
        color="#1f77b4",
        ha="center",
    )
    fig.tight_layout()
    return fig


def prototype_space(seed: int = 0) -> plt.Figure:
    """An embedding space with three classes: support embeddings, their means (the
    prototypes), a query, and the regions closer to each prototype than to the others."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-1.5, 0.8], [1.4, 1.0], [0.1, -1.4]])
    support = centres[:, None] + 0.45 * torch.randn(3, 5, 2, generator=gen)
    protos = support.mean(1)
    query = torch.tensor([0.55, 0.1])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    xs, ys = torch.meshgrid(torch.linspace(-3, 3, 300), torch.linspace(-3, 3, 300), indexing="xy")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2)
    nearest = torch.cdist(grid, protos).argmin(1).reshape(xs.shape)
    ax.contourf(
        xs, ys, nearest, levels=[-0.5, 0.5, 1.5, 2.5], colors=["C0", "C1", "C2"], alpha=0.12
    )
    for c in range(3):
        ax.scatter(*support[c].T, color=f"C{c}", s=25, label=f"class {c + 1}: support embeddings")
        ax.scatter(*protos[c], color=f"C{c}", marker="*", s=320, edgecolor="k", zorder=3)
        ax.plot(*torch.stack([query, protos[c]]).T, color="0.4", ls=":", lw=1)
    ax.scatter([], [], color="w", marker="*", s=200, edgecolor="k", label="prototype (class mean)")
    ax.scatter(*query, color="k", marker="X", s=110, zorder=4, label="query embedding")
    ax.set(
        xlim=(-3, 3),
        ylim=(-3, 3),
        xlabel="embedding dimension 1",
        ylabel="embedding dimension 2",
        title="a query takes its nearest prototype's label",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def rl2_timeline(episodes: int = 3, steps: int = 4) -> plt.Figure:
    """An RL² trial of ``episodes`` episodes of ``steps`` steps: at every step the GRU reads
    (observation, previous action, previous reward, done flag); its hidden state runs through
    the whole trial, across episode ends, and is reset only when a new trial (a new task)
    begins."""
    width = (episodes + 1) * steps + 1.5
    fig, ax = _canvas(10, 3.6, (-1.6, width), (-1.6, 3.4))
    x = 0.0
    for trial, label in ((0, "trial 1: task $\\mathcal{M}_1$"), (1, "trial 2: new task")):
        if trial == 1:
            x += 0.8
            ax.axvline(x - 0.4, color=GRAD, lw=2)
            ax.text(x - 0.4, 3.1, "hidden state reset", color=GRAD, ha="center", fontsize=9)
        n_ep = episodes if trial == 0 else 1
        start = x
        for e in range(n_ep):
            ax.add_patch(
                FancyBboxPatch(
                    (x - 0.4, -0.45),
                    steps - 0.2,
                    0.9,
                    boxstyle="round,pad=0.02",
                    facecolor=INNER if trial == 0 else DATA,
                    edgecolor="0.4",
                )
            )
            ax.text(x + steps / 2 - 0.5, -0.8, f"episode {e + 1}", ha="center", fontsize=8)
            for s in range(steps):
                ax.plot(x + s, 0, "o", color="0.25", ms=5)
                ax.annotate(
                    "",
                    (x + s, 1.4),
                    (x + s, 0.5),
                    arrowprops={"arrowstyle": "-|>", "color": "0.5", "lw": 0.8},
                )
            if e < n_ep - 1:
                ax.text(x + steps - 0.5, 0.65, "done", fontsize=7, ha="center", color="0.3")
            x += steps
        ax.plot([start - 0.3, x - 0.7], [1.7, 1.7], color="#1f77b4", lw=3)
        ax.text((start + x) / 2 - 0.5, 2.2, label, ha="center", fontsize=9)
    ax.text(-1.4, 1.7, r"$h_t$", color="#1f77b4", va="center", fontsize=12)
    ax.text(-1.4, 0.0, "steps", va="center", fontsize=9)
    ax.text(
        width / 2 - 1.0,
        -1.45,
        r"input at step $t$: $(s_t, a_{t-1}, r_{t-1}, d_{t-1})$;  "
        r"the return summed over the whole trial is what PPO maximises",
        ha="center",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def side_by_side() -> plt.Figure:
    """Meta-learning and meta-RL, one outer loop: only the inner loop's data and objective
    differ (labelled examples and a loss; trajectories and a return)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = {
        "meta-learning (supervised)": (
            r"task $\tau$: a dataset",
            r"support set $D^{s}_\tau$ (K examples)",
            r"adapt: a gradient step, a forward pass or class means",
            r"query loss $\mathcal{L}(\phi_\tau, D^{q}_\tau)$",
        ),
        "meta-RL": (
            r"task $\mathcal{M}$: an MDP",
            r"trajectories from $\pi_\theta$",
            r"adapt: a policy-gradient step, or the RNN's hidden state",
            r"return $\mathbb{E}_{\pi_\phi}[\sum_t r_t]$ (maximised)",
        ),
    }
    for ax, (title, (task, data, adapt, score)) in zip(axes, rows.items(), strict=True):
        ax.set(xlim=(-0.6, 6), ylim=(0.6, 6))
        ax.axis("off")
        ax.set_title(title, fontsize=11)
        for y, text, color in ((5.2, task, DATA), (3.9, data, DATA), (2.6, adapt, INNER)):
            _box(ax, 3.2, y, text, color, width=5.2, height=0.7, fontsize=9)
        _box(ax, 3.2, 1.3, score, DATA, width=5.2, height=0.7, fontsize=9)
        for y in (4.85, 3.55, 2.25):
            _arrow(ax, (3.2, y), (3.2, y - 0.6))
        _arrow(ax, (0.55, 1.3), (0.0, 1.3), color=GRAD, style="-")
        _arrow(ax, (0.0, 1.3), (0.0, 5.2), color=GRAD, style="-")
        _arrow(ax, (0.0, 5.2), (0.55, 5.2), color=GRAD)
        ax.text(
            -0.25,
            3.25,
            r"outer loop on $\theta$",
            rotation=90,
            color=GRAD,
            va="center",
            ha="center",
        )
    fig.tight_layout()
    return fig


DIAGRAMS = {
    "bilevel_loop": bilevel_loop,
    "maml_graph": maml_graph,
    "prototype_space": prototype_space,
    "rl2_timeline": rl2_timeline,
    "side_by_side": side_by_side,
}
