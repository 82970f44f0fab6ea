"""Interactive figures with a static fallback. Introduced in lesson 01.

:func:`interact` first shows the figure for the default values as a plain image, which every
front end renders (nbconvert, GitHub, a grader), then the sliders with a live figure below
them, which JupyterLab, Jupyter Notebook and Colab render.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib.pyplot as plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def interact(draw: Callable[..., object], *, static: bool = True, **controls):
    """Shows ``draw(**values)`` with one control per keyword.

    Args:
        draw: returns a matplotlib ``Figure`` for the given control values.
        static: also show the default figure as a plain image first (the fallback).
        **controls: ``name=widget`` pairs, e.g. ``steps=IntSlider(value=1, min=0, max=10)``;
            each widget's ``value`` is its default.

    Returns:
        The ``ipywidgets.VBox`` holding the controls and the live figure.
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    values = {name: w.value for name, w in controls.items()}
    if static:
        display(Image(_png(draw(**values))))
    image = widgets.Image(format="png", value=_png(draw(**values)))
    image.layout.max_width = "720px"  # the PNG at its own size, not stretched to the page

    def redraw(_change=None):
        image.value = _png(draw(**{name: w.value for name, w in controls.items()}))

    for w in controls.values():
        w.observe(redraw, names="value")
    box = widgets.VBox([*controls.values(), image])
    display(box)
    return box
