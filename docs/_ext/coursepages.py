"""What the course website adds to the notebooks' pages, without editing the notebooks.

- Each lesson page opens with a note linking its notebook in the repository, its exercise page
  and Colab, saying in which mode it was executed and that its widgets are live only in
  JupyterLab or Colab; each exercise page with a note linking its notebook, its lesson and
  Colab.
- Each live widget (an ipywidgets view, which needs a kernel) gives way to the static picture
  that ``mlcourse.course.widgets`` puts in the same output, with a line saying where it is live.
- The notebooks' "Open in Colab" badge image is served from the site (``_static``) rather than
  from Colab's host, so that every image of the site loads offline; any other remote image is a
  warning, hence an error under ``-W``.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = "/docs/_static/colab-badge.svg"  # relative to the source folder (the repo root)
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_VIEW = f'<script type="{WIDGET_VIEW_MIME}">'
PAGE = re.compile(r"^(notebooks|exercises)/(\d\d)_\w+$")


def _text(text: str) -> nodes.Text:
    return nodes.Text(text)


def _link(text: str, url: str) -> nodes.reference:
    return nodes.reference("", text, refuri=url, internal=False)


def _doc(text: str, target: str, refdoc: str) -> addnodes.pending_xref:
    """A ``:doc:`` reference: a missing page is a build warning (an error under ``-W``)."""
    return addnodes.pending_xref(
        "",
        nodes.inline("", text),
        refdomain="std",
        reftype="doc",
        reftarget=target,
        refexplicit=True,
        refwarn=True,
        refdoc=refdoc,
    )


def _code(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _page_note(app: Sphinx, docname: str) -> nodes.Element | None:
    match = PAGE.match(docname)
    if not match:
        return None
    folder, number = match.groups()
    name = docname.split("/", 1)[1]
    config = app.config
    source = f"{config.course_repository}/blob/{config.course_branch}/{docname}.ipynb"
    colab = f"{config.course_colab}/{docname}.ipynb"
    para = nodes.paragraph()
    if folder == "notebooks":
        if config.course_fast:
            mode = [
                _text("Executed when this site was built, in fast mode ("),
                _code("MLCOURSE_FAST=1"),
                _text(": smaller training budgets, the same code), so its numbers come from "
                      "shorter runs than the lesson's full mode. "),
            ]  # fmt: skip
        else:
            mode = [_text("Executed when this site was built, in full mode. ")]
        para += [
            *mode,
            _text("Notebook: "),
            _link(f"notebooks/{name}.ipynb", source),
            _text(" · exercises: "),
            _doc(f"exercises/{name}.ipynb", f"/exercises/{name}", docname),
            _text(" · "),
            _link("open in Colab", colab),
            _text(". Its widgets (sliders, buttons) are live in JupyterLab or Colab; here each "
                  "shows its figure for the default values."),
        ]  # fmt: skip
        classes = ["course-page-note", "course-lesson-note"]
    else:
        para += [
            _text("Exercises of "),
            _doc(f"lesson {number}", f"/notebooks/{name}", docname),
            _text(", shown as released and not executed: open the notebook in JupyterLab or "
                  "Colab, write each function where it says "),
            _code("# YOUR CODE HERE"),
            _text(", and run the check cell below it, which answers ✅ or ❌ with a hint. "
                  "Notebook: "),
            _link(f"exercises/{name}.ipynb", source),
            _text(" · "),
            _link("open in Colab", colab),
            _text("."),
        ]  # fmt: skip
        classes = ["course-page-note", "course-exercise-note"]
    title = "About this page" if folder == "notebooks" else "About these exercises"
    return nodes.admonition("", nodes.title("", title), para, classes=["note", *classes])


def _insert_page_note(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    note = _page_note(app, docname)
    if note is None:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    title = section.next_node(nodes.title) if section is not None else None
    if title is None:
        logger.warning("no title to put the course note under", location=docname)
        return
    section.insert(section.index(title) + 1, note)


def _widget_note(picture: bool) -> nodes.paragraph:
    note = nodes.paragraph(classes=["course-widget-note"])
    if picture:
        text = ("▶ In JupyterLab or Colab this figure is a live widget: its controls redraw it. "
                "Here it shows their default values.")  # fmt: skip
    else:
        text = "▶ A live widget stands here in JupyterLab or Colab."
    note += _text(text)
    return note


def _widgets_to_notes(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Drops each live widget view (nothing can run it here) and keeps the static picture that
    the same output carries (``mlcourse.course.widgets`` puts a PNG beside the view), with a
    note."""
    for bundle in list(doctree.findall(nodes.container)):
        if bundle.get("nb_element") != "mime_bundle":
            continue
        views = [c for c in bundle.children if c.get("mime_type") == WIDGET_VIEW_MIME]
        if not views:
            continue
        for view in views:
            bundle.remove(view)
        picture = any(c.get("mime_type", "").startswith("image/") for c in bundle.children)
        if picture:
            bundle.parent.insert(bundle.parent.index(bundle) + 1, _widget_note(True))
        else:  # only the widget's text repr is left ("VBox(children=...)")
            bundle.replace_self(_widget_note(False))
    for raw in list(doctree.findall(nodes.raw)):  # a view alone in its output
        if raw.astext().startswith(WIDGET_VIEW):
            raw.replace_self(_widget_note(False))
    # the widgets' saved state is of no use without a widget manager (none is loaded)
    js_files = getattr(app.env, "nb_metadata", {}).get(docname, {}).get("js_files", {})
    js_files.pop("ipywidgets_state", None)


def _local_images(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for image in doctree.findall(nodes.image):
        uri = image.get("uri", "")
        if uri == COLAB_BADGE:
            image["uri"] = LOCAL_BADGE
        elif uri.startswith(("http://", "https://", "//")):
            logger.warning("remote image %s: the site is read offline", uri, location=image)


def doctree_read(app: Sphinx, doctree: nodes.document) -> None:
    docname = app.env.docname
    _local_images(app, doctree, docname)
    _widgets_to_notes(app, doctree, docname)
    _insert_page_note(app, doctree, docname)


def setup(app: Sphinx) -> dict:
    app.add_config_value("course_repository", "", "env")
    app.add_config_value("course_branch", "main", "env")
    app.add_config_value("course_colab", "", "env")
    app.add_config_value("course_fast", True, "env")
    app.connect("doctree-read", doctree_read, priority=100)  # before Sphinx collects images
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
