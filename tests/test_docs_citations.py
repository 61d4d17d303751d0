"""Comments and docstrings cite the repository's own docs: every ``docs/<page>.md#<anchor>`` they name exists,
and nothing cites a document outside the repository (the design card's SPEC sections, "the issue")."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "fba").rglob("*.py")), *sorted((ROOT / "kernels").glob("*.py")),
           *sorted((ROOT / "benchmarks").glob("*.py"))]
CITATION = re.compile(r"docs/([\w-]+)\.md#([\w-]+)")


def anchors(page: Path) -> set[str]:
    """Explicit ``<a id>`` anchors and the GitHub slugs of the headings."""
    text = page.read_text()
    found = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def test_every_cited_section_exists():
    cited = {(path, page, anchor) for path in SOURCES for page, anchor in CITATION.findall(path.read_text())}
    assert len(cited) >= 10  # the design sections are cited where the code relies on them
    missing = [f"{path.relative_to(ROOT)}: docs/{page}.md#{anchor}" for path, page, anchor in sorted(cited)
               if not (ROOT / "docs" / f"{page}.md").is_file() or anchor not in anchors(ROOT / "docs" / f"{page}.md")]
    assert not missing, "citations of sections that do not exist: " + ", ".join(missing)


def test_nothing_cites_documents_outside_the_repository():
    outside = re.compile(r"SPEC|design card|the issue")
    hits = [f"{path.relative_to(ROOT)}:{number}" for path in SOURCES
            for number, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, "cite docs/design.md (or another docs/ page) instead: " + ", ".join(hits)
