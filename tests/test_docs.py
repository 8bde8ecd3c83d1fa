"""The README is a newcomer's first page: its links lead somewhere, the docs/ pages it
names exist, and its two set-up commands are the ones CI runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose(path: Path) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```[^\n]*$", "", path.read_text(), flags=re.M | re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found = set()
    for title in re.findall(r"^#{1,6} (.+)$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(path))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_every_docs_path_the_readme_names_exists():
    named = set(re.findall(r"docs/[\w./-]*\w", README.read_text()))
    assert named, "the README names its docs/ pages"
    assert not [p for p in named if not (ROOT / p).exists()]
    for page in ("data", "training", "objects", "volumes", "predict", "performance",
                 "reliability", "api", "architecture", "realdata"):
        assert f"docs/{page}.md" in named, page


def test_the_readme_s_two_commands_are_the_ones_ci_runs():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_the_readme_is_short_and_the_rest_is_in_docs():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "## Real data" in text and "docs/realdata.md" in text
    assert (ROOT / "docs" / "realdata.md").read_text().startswith("# ")
