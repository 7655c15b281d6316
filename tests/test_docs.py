"""The docs site builds with ``mkdocs build --strict``, and the README stays a front page.

A broken link, a link to a missing heading, or a page under ``docs/`` left out of ``nav`` fails
the strict build (``validation`` in ``mkdocs.yml``); the tests below check the build, that the
configuration really catches those mistakes, and the commands the README promises.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CONFIG = REPO / "mkdocs.yml"
QUICK_START = (
    "bash scripts/setup.sh && .venv/bin/search run --study digits --trials 20",
    "bash scripts/setup.sh test && .venv/bin/python -m pytest",
)


def _nav_pages(nav: list) -> list[tuple[str, str]]:
    """(title, page path) for every page in a mkdocs ``nav``, sections flattened."""
    pages = []
    for entry in nav:
        if isinstance(entry, str):
            pages.append((entry, entry))
            continue
        for title, value in entry.items():
            if isinstance(value, list):
                pages.extend(_nav_pages(value))
            else:
                pages.append((title, value))
    return pages


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not a build warning
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
        + ["--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _html_of(page: str) -> str:
    """Where mkdocs writes ``page`` with directory URLs (its default)."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return stem + ".html"
    return stem + "/index.html"


def test_strict_build_renders_every_nav_page(tmp_path):
    site = tmp_path / "site"
    result = _build(CONFIG, site)
    assert result.returncode == 0, result.stdout + result.stderr
    pages = _nav_pages(_config()["nav"])
    assert pages, "mkdocs.yml has an empty nav"
    for title, page in pages:
        html = site / _html_of(page)
        assert html.is_file(), f"nav page {title!r} ({page}) produced no {html.name}"
        assert "<h1" in html.read_text(encoding="utf-8"), f"{html} has no heading"


def test_every_docs_page_is_in_nav():
    in_nav = {page for _, page in _nav_pages(_config()["nav"])}
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk - in_nav == set(), "pages missing from nav in mkdocs.yml"
    assert in_nav - on_disk == set(), "nav names pages that do not exist"


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("See [the page](no-such-page.md).", "no-such-page.md"),
        ("See [the heading](run.md#no-such-heading).", "no-such-heading"),
        ("See [a repo file](../studies/digits.toml).", "digits.toml"),
    ],
)
def test_strict_build_fails_on_a_broken_link(tmp_path, mistake, message):
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(CONFIG, tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "budgets.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\n{mistake}\n", encoding="utf-8")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, "a broken link passed the strict build"
    assert message in result.stdout + result.stderr


def test_strict_build_fails_on_a_page_left_out_of_nav(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(CONFIG, tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, "a page missing from nav passed the strict build"
    assert "orphan.md" in result.stdout + result.stderr


def test_readme_keeps_the_quick_start_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^## Quick start$", readme, re.MULTILINE), "no '## Quick start' heading"
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = quick_start.splitlines()
    for command in QUICK_START:
        assert command in lines, f"Quick start lost the command line {command!r}"


def test_readme_links_point_at_existing_docs_pages():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert targets, "the README links to no docs page"
    missing = sorted({t for t in targets if not (REPO / t).is_file()})
    assert missing == [], f"README links to missing files: {missing}"
