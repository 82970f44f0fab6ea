"""The course's diagrams draw, label what they show, and render to an image."""

import io

import matplotlib
import pytest

from mlcourse.course import diagrams

matplotlib.use("Agg")

LABELS = {  # words each diagram must show
    "bilevel_loop": ["inner loop", "outer loop", "support set", "query loss"],
    "maml_graph": ["second order", "first order", "forward"],
    "prototype_space": ["prototype (class mean)", "query embedding", "embedding dimension 1"],
    "rl2_timeline": ["hidden state reset", "episode 1", "trial 2: new task"],
    "side_by_side": ["meta-learning (supervised)", "meta-RL", "outer loop"],
}


@pytest.mark.parametrize("name", sorted(diagrams.DIAGRAMS))
def test_every_diagram_draws_with_its_labels(name):
    fig = diagrams.DIAGRAMS[name]()
    texts = " | ".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])
    texts += " | " + " | ".join(
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    )
    texts += " | " + " | ".join(ax.get_xlabel() for ax in fig.axes)
    for label in LABELS[name]:
        assert label in texts, (name, label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_every_diagram_is_tested():
    assert set(LABELS) == set(diagrams.DIAGRAMS)
