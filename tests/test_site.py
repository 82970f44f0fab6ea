"""The course website that `make site` builds into docs/_build/html, opened from disk.

The HTML of every page is checked for what a reader offline needs (no script or stylesheet from
the network, every lesson linked to its notebook, exercises and Colab); then headless Chromium
(Debian's, driven by Python Playwright, never `playwright install`) opens index.html, follows
the link to lesson 02 and checks that its maths rendered, that its figures and a widget's static
picture loaded and that nothing was fetched from the network, and opens the reproduction report.
Screenshots go to docs/_build/screenshots/ (the test prints the folder).

`make test` builds the site first; without it these tests fail, they never skip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, require_chromium

from mlcourse import course

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "_build" / "html"
SCREENSHOTS = ROOT / "docs" / "_build" / "screenshots"
LESSONS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = sorted(p.stem for p in (ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))
REPOSITORY = f"{course.REPO_URL}/blob/{course.BRANCH}"
COLAB = course.colab_url("").rstrip("/")
REMOTE = re.compile(r"^(https?:)?//", re.I)


def _built() -> Path:
    """The built site; a test fails (never skips) when it is not there."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE / 'index.html'} is missing: build the site with `make site`")
    return SITE


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_lesson_exercise_report_and_api_page_is_built():
    site = _built()
    assert len(LESSONS) == 10 and len(EXERCISES) == 10
    for name in LESSONS:
        assert (site / "notebooks" / f"{name}.html").is_file(), name
    for name in EXERCISES:
        assert (site / "exercises" / f"{name}.html").is_file(), name
    assert (site / "docs" / "reproductions.html").is_file()
    api = _html(site / "docs" / "api" / "index.html")
    for module in [
        "mlcourse.algorithms.maml",
        "mlcourse.algorithms.reptile",
        "mlcourse.algorithms.rl2",
        "mlcourse.course.checks",
    ]:
        assert module in api, module
    maml = _html(site / "docs" / "api" / "generated" / "mlcourse.algorithms.maml.html")
    assert (
        'id="mlcourse.algorithms.maml.adapt"' in maml
        and 'id="mlcourse.algorithms.maml.meta_loss"' in maml
    )


def test_no_page_loads_a_script_or_stylesheet_from_the_network():
    site = _built()
    tag = re.compile(r"<(script|link)\b[^>]*>", re.I)
    attr = re.compile(r'\b(src|href|rel|as)\s*=\s*"([^"]*)"', re.I)
    for page in site.rglob("*.html"):
        for match in tag.finditer(_html(page)):
            attrs = {k.lower(): v for k, v in attr.findall(match.group(0))}
            if match.group(1).lower() == "script":
                url = attrs.get("src", "")
            elif re.search(r"stylesheet|preload|modulepreload|icon", attrs.get("rel", ""), re.I):
                url = attrs.get("href", "")
            else:
                continue
            assert not REMOTE.match(url), f"{page.relative_to(site)} loads {match.group(0)}"
    for sheet in site.rglob("*.css"):
        remote = re.findall(r"(?:@import|url\()\s*['\"]?((?:https?:)?//[^'\")]+)", _html(sheet))
        assert not remote, f"{sheet.relative_to(site)} loads {remote}"
    assert (site / "_static" / "mathjax" / "tex-svg.js").is_file()


def test_each_lesson_links_its_notebook_exercises_and_colab():
    site = _built()
    for name in LESSONS:
        html = _html(site / "notebooks" / f"{name}.html")
        assert f'href="{REPOSITORY}/notebooks/{name}.ipynb"' in html, name
        assert f'href="../exercises/{name}.html"' in html, name
        assert f'href="{COLAB}/notebooks/{name}.ipynb"' in html, name
        assert "live in JupyterLab or Colab" in html, name
        # the notebook's own Colab badge is a link, its image served by the site
        badge = re.search(rf'<a [^>]*href="{re.escape(COLAB)}/notebooks/{name}.ipynb"[^>]*>'
                          r'\s*<img [^>]*src="([^"]+)"', html)  # fmt: skip
        assert badge and not REMOTE.match(badge.group(1)), name
        assert 'class="cell_output' in html, f"{name} shows no executed output"
    for name in EXERCISES:
        html = _html(site / "exercises" / f"{name}.html")
        assert f'href="../notebooks/{name}.html"' in html, name
        assert f'href="{COLAB}/exercises/{name}.ipynb"' in html, name


def test_the_lessons_links_to_the_report_resolve():
    site = _built()
    for name in ["06_rl2", "08_learned_objectives"]:
        html = _html(site / "notebooks" / f"{name}.html")
        assert 'href="../docs/reproductions.html' in html, name
    assert "../docs/reproductions.md" not in _html(site / "notebooks" / "06_rl2.html")


def _open(browser, url: str):
    """A page at ``url`` that records every request made outside the site's own files."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    remote: list[str] = []
    page.on("request", lambda r: remote.append(r.url) if REMOTE.match(r.url) else None)
    page.goto(url)
    return page, remote


def _wait_for_mathjax(page) -> None:
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise")


RAW_TEXT = """() => {
    const skip = 'pre, code, script, style, mjx-container, .highlight, .cell_output';
    const walker = document.createTreeWalker(
        document.querySelector('article') || document.body, NodeFilter.SHOW_TEXT);
    const texts = [];
    while (walker.nextNode()) {
        const node = walker.currentNode;
        if (!node.parentElement.closest(skip)) texts.push(node.textContent);
    }
    return texts.join(' ');
}"""

BROKEN_IMAGES = """async () => {
    const images = [...document.querySelectorAll('img')];
    for (const img of images) { img.loading = 'eager'; }
    await Promise.all(images.map(img => img.complete ? null :
        new Promise(done => { img.onload = img.onerror = done; })));
    return {count: images.length,
            broken: images.filter(img => !(img.naturalWidth > 0)).map(img => img.src)};
}"""


@pytest.mark.slow
def test_the_site_in_chromium_lesson_02_and_the_report():
    site = _built()
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {SCREENSHOTS}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # the home page, then lesson 02 through its link
            page, remote = _open(browser, (site / "index.html").as_uri())
            page.wait_for_url(re.compile(r"/docs/index\.html$"))
            page.locator("article a").filter(has_text=re.compile(r"^02 · MAML$")).first.click()
            page.wait_for_url(re.compile(r"/notebooks/02_maml\.html$"))
            expect(page.locator("h1").first).to_contain_text("MAML")

            _wait_for_mathjax(page)
            assert page.locator("mjx-container").count() >= 10, "MathJax rendered no maths"
            assert page.locator("mjx-container svg").count() >= 10
            assert page.locator("mjx-container[display='true']").count() >= 1
            raw = re.findall(r"\$|\\(?:frac|theta|nabla|sum|mathcal|begin)\b",
                             page.evaluate(RAW_TEXT))  # fmt: skip
            assert not raw, f"maths left as TeX in lesson 02's text: {raw[:10]}"

            images = page.evaluate(BROKEN_IMAGES)
            assert images["count"] >= 3, images  # the Colab badge and the figures
            assert not images["broken"], f"images that did not load: {images['broken']}"

            note = page.locator(".course-lesson-note")
            expect(note.locator('a[href="../exercises/02_maml.html"]')).to_have_count(1)
            widget = page.locator(".cell_output").filter(has=page.locator(".course-widget-note"))
            expect(widget.first).to_be_visible()
            picture = widget.first.locator("img").first
            expect(picture).to_be_visible()
            assert picture.evaluate("img => img.naturalWidth") > 100, "no static widget picture"
            badge = page.locator(f'a[href="{COLAB}/notebooks/02_maml.ipynb"] img').first
            assert badge.evaluate("img => img.naturalWidth") > 0

            shot = SCREENSHOTS / "02_maml.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            widget.first.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "02_maml_widget.png"))
            assert not remote, f"lesson 02 fetched from the network: {remote[:5]}"
            page.close()

            # the reproduction report, through lesson 06's link to it
            page, remote = _open(browser, (site / "notebooks" / "06_rl2.html").as_uri())
            page.locator('article a[href^="../docs/reproductions.html"]').first.click()
            page.wait_for_url(re.compile(r"/docs/reproductions\.html(#.*)?$"))
            expect(page.locator("h1").first).to_contain_text("Reproductions")
            assert page.locator("article table").count() >= 5
            images = page.evaluate(BROKEN_IMAGES)
            assert not images["broken"], images
            page.evaluate("() => window.scrollTo(0, 0)")
            shot = SCREENSHOTS / "reproductions.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            rl2 = page.locator("article h2").filter(has_text="Meta-RL bandits and MDPs")
            expect(rl2).to_have_count(1)
            rl2.evaluate("h => h.scrollIntoView({block: 'start'})")
            shot = SCREENSHOTS / "reproductions_rl2.png"  # the RL² section, as a reader lands on it
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            assert not remote, f"the report fetched from the network: {remote[:5]}"
        finally:
            browser.close()
