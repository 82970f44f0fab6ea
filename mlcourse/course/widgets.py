"""Interactive figures with a static fallback. Introduced in lesson 01.

:func:`interact` displays one output that front ends read in two ways: JupyterLab, Jupyter
Notebook and Colab show the controls with a live figure below them; front ends without a live
kernel (nbconvert, GitHub, a static site) show the figure for the default values as a plain
image instead. Either way the figure appears once, at its own size.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Callable

import matplotlib.pyplot as plt

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels of a PNG image, read from its header.

    >>> buf = io.BytesIO()
    >>> plt.imsave(buf, [[0.0] * 5] * 3, format="png")
    >>> png_size(buf.getvalue())
    (5, 3)
    """
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", png[16:24])


def widget_bundle(widget) -> dict:
    """The display data of ``widget``: a plain-text line and the widget view that live front
    ends render, exactly as ipywidgets 8 (``_repr_mimebundle_``) and 7 (``_ipython_display_``,
    Colab's) both publish it, so that a static image can be added beside the view.

    >>> from ipywidgets import IntSlider
    >>> slider = IntSlider()
    >>> widget_bundle(slider)[WIDGET_VIEW]["model_id"] == slider.model_id
    True
    """
    text = repr(widget)
    return {
        "text/plain": text if len(text) <= 110 else text[:110] + "…",
        WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": widget.model_id},
    }


def _fit(image, png: bytes) -> None:
    """Shows the widget's PNG at its own size (shrunk, never stretched, to fit the page)."""
    width, _ = png_size(png)
    image.layout.width = f"{width}px"
    image.layout.max_width = "100%"
    image.layout.height = "auto"


def interact(draw: Callable[..., object], *, static: bool = True, **controls):
    """Shows ``draw(**values)`` with one control per keyword.

    Args:
        draw: returns a matplotlib ``Figure`` for the given control values.
        static: also give front ends without a live kernel the default figure as a plain
            image (in the same output: a live front end shows only the widget).
        **controls: ``name=widget`` pairs, e.g. ``steps=IntSlider(value=1, min=0, max=10)``;
            each widget's ``value`` is its default.

    Returns:
        The ``ipywidgets.VBox`` holding the controls and the live figure.
    """
    import ipywidgets as widgets
    from IPython.display import display

    first = _png(draw(**{name: w.value for name, w in controls.items()}))
    image = widgets.Image(format="png", value=first)
    _fit(image, first)

    def redraw(_change=None):
        png = _png(draw(**{name: w.value for name, w in controls.items()}))
        image.value = png
        _fit(image, png)

    for w in controls.values():
        w.observe(redraw, names="value")
    box = widgets.VBox([*controls.values(), image])
    bundle = widget_bundle(box)
    if static:
        bundle["image/png"] = base64.b64encode(first).decode("ascii")
    display(bundle, raw=True)
    return box


def bandit_duel(policy, *, num_arms: int = 5, num_pulls: int = 10, seed: int = 0):
    """Play Bernoulli bandits against an RL² agent: one button per arm. Lesson 06.

    Each click pulls an arm of the current bandit for you; the agent plays the same bandit with
    the same luck, and both histories are redrawn: pulls as coloured marks (a dot where the pull
    paid), this bandit's scores in the title. A bandit is drawn once, from its seed: the arms'
    success probabilities ``p[a]`` (the bandit :class:`~mlcourse.envs.BernoulliBanditVectorEnv`
    draws with that seed), then a table of uniforms ``u[t, a]``; pull ``t`` of arm ``a`` pays 1
    when ``u[t, a] < p[a]``, whoever pulls it. After ``num_pulls`` pulls the true probabilities
    are revealed and the bandit joins the running score below the figure (your total, the
    agent's total over the same bandits, and how many bandits were played); "new bandit" draws
    the next one. A bandit left before its last pull does not count. Front ends without a live
    kernel show the agent's whole trial on the first bandit as a plain image instead (the
    static fallback).

    Args:
        policy: an :class:`mlcourse.algorithms.rl2.RL2Policy` trained on ``num_arms`` arms.
        num_arms, num_pulls: the bandit's size.
        seed: the first bandit's seed (then seed + 1, ...).

    Returns:
        The ``ipywidgets.VBox`` of the buttons, the figure and the running score. Its ``.game``
        attribute holds the state, for tests: ``probs`` ``(num_arms,)``, ``luck``
        ``(num_pulls, num_arms)``, the agent's ``Trials``, your ``pulls`` and ``rewards``, and
        ``score``, the running totals ``{"you": float, "agent": float, "bandits": int}``.
    """
    import ipywidgets as widgets
    import torch
    from IPython.display import display

    from mlcourse.algorithms import rl2

    class SharedLuck:
        """One trial of the duel's bandit, for either player (the batched-environment calls
        that :func:`mlcourse.algorithms.rl2.run_trials` makes, one bandit wide)."""

        num_envs, device = 1, torch.device("cpu")

        def __init__(self, probs, luck):
            self.probs, self.luck, self.num_pulls, self.pulls = probs, luck, num_pulls, 0

        def reset(self, *, seed=None, options=None):
            self.pulls = 0
            return torch.zeros(1, dtype=torch.long), {"probs": self.probs[None].clone()}

        def step(self, actions):
            arm = int(torch.as_tensor(actions).reshape(-1)[0])
            reward = (self.luck[self.pulls, arm] < self.probs[arm]).float().reshape(1)
            self.pulls += 1
            ended = torch.tensor([self.pulls == self.num_pulls])
            return torch.zeros(1, dtype=torch.long), reward, ended, torch.zeros_like(ended), {}

    game: dict = {"score": {"you": 0.0, "agent": 0.0, "bandits": 0}}

    def new_bandit(bandit_seed: int) -> None:
        draw = torch.Generator().manual_seed(bandit_seed)
        probs = torch.rand(num_arms, generator=draw)  # the bandit, then its luck u[t, a]
        luck = torch.rand(num_pulls, num_arms, generator=draw)
        agent = rl2.run_trials(
            policy, SharedLuck(probs, luck), generator=torch.Generator().manual_seed(bandit_seed)
        )
        mine = SharedLuck(probs, luck)
        mine.reset()
        game.update(
            seed=bandit_seed, probs=probs, luck=luck, agent=agent, env=mine, pulls=[], rewards=[]
        )

    def figure(static: bool = False):
        """The board; ``static``: the agent's whole trial, for front ends without a kernel."""
        agent, pulls = game["agent"], game["pulls"]
        fig, ax = plt.subplots(figsize=(7, 2.2))
        shown = num_pulls if static else min(len(pulls), num_pulls)
        for row, arms, paid in (
            (1, pulls, game["rewards"]),
            (0, agent.actions[:shown, 0].tolist(), agent.rewards[:shown, 0].tolist()),
        ):
            for t, (arm, r) in enumerate(zip(arms, paid, strict=True)):
                ax.scatter(t, row, s=160, color=f"C{arm}", marker="o" if r else "x")
                ax.annotate(
                    str(arm),
                    (t, row),
                    textcoords="offset points",
                    xytext=(0, 9),
                    ha="center",
                    fontsize=7,
                )
        done = static or len(pulls) >= num_pulls
        title = (
            f"this bandit: you {int(sum(game['rewards']))}, "
            f"the agent {int(agent.rewards[:shown, 0].sum())}"
        )
        if static:
            title = f"the agent's trial: {int(agent.rewards[:, 0].sum())} of {num_pulls} pulls paid"
        if done:
            probs = ", ".join(f"{p:.2f}" for p in agent.task["probs"][0].tolist())
            title += f"   (arm probabilities: {probs})"
        ax.set(
            yticks=[0, 1],
            yticklabels=["agent", "you"],
            xticks=range(num_pulls),
            xticklabels=[str(t + 1) for t in range(num_pulls)],
            xlim=(-0.5, num_pulls - 0.5),
            ylim=(-0.6, 1.6),
            xlabel="pull (dot: paid, cross: not paid; the number is the arm)",
            title=title,
        )
        return fig

    def score_text() -> str:
        score = game["score"]
        if score["bandits"] == 0:
            return "Running score: no bandit finished yet."
        plural = "s" if score["bandits"] > 1 else ""
        return (
            f"Running score over {score['bandits']} bandit{plural}: "
            f"you {score['you']:.0f}, the agent {score['agent']:.0f}."
        )

    new_bandit(seed)
    first = _png(figure())
    image = widgets.Image(format="png", value=first)
    _fit(image, first)
    fallback = _png(figure(static=True))
    label = widgets.HTML(value=score_text())

    def redraw() -> None:
        png = _png(figure())
        image.value = png
        _fit(image, png)
        label.value = score_text()

    def pull(arm: int) -> None:
        if len(game["pulls"]) >= num_pulls:
            return
        _, reward, *_ = game["env"].step(torch.tensor([arm]))
        game["pulls"].append(arm)
        game["rewards"].append(float(reward.item()))
        if len(game["pulls"]) == num_pulls:  # the bandit is over: it joins the running score
            game["score"]["you"] += sum(game["rewards"])
            game["score"]["agent"] += float(game["agent"].rewards[:, 0].sum())
            game["score"]["bandits"] += 1
        redraw()

    def restart(_button=None) -> None:
        new_bandit(game["seed"] + 1)
        redraw()

    buttons = []
    for arm in range(num_arms):
        button = widgets.Button(description=f"arm {arm}", layout=widgets.Layout(width="80px"))
        button.on_click(lambda _b, arm=arm: pull(arm))
        buttons.append(button)
    again = widgets.Button(description="new bandit")
    again.on_click(restart)
    box = widgets.VBox([widgets.HBox([*buttons, again]), image, label])
    box.game = game
    bundle = widget_bundle(box)
    bundle["image/png"] = base64.b64encode(fallback).decode("ascii")
    display(bundle, raw=True)
    return box
