"""The repository speaks of itself: every ``docs/<page>.md#<anchor>`` that code, configs or docs name exists, and
no tracked text file cites a document outside the repository or tells how the work was organised rather than
what the software does."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "fba").rglob("*.py")), *sorted((ROOT / "kernels").glob("*.py")),
           *sorted((ROOT / "benchmarks").glob("*.py"))]
CITATION = re.compile(r"docs/([\w-]+)\.md#([\w-]+)")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".json", ".cpp", ".h", ".cu", ".sh", ""}
# Outside documents (a specification named in capitals, a design card, issue numbers) and the history of the
# work (sessions, lent machines, budgets); "session" alone is a runtime's word (onnxruntime, pytest) and stays
# allowed.
# Matched over the whole text, so a phrase broken across lines is found too.
OUTSIDE = re.compile(r"(?-i:\bSPEC\b)|design\s+card|\bissues?\s?#?\d+|\bthe\s+issue\b|(this|next|that)\s+session\b|"
                     r"session\s+that\s+built|was\s+lent|GPU\s+lent|the\s+lent\b|device[-\s]+time\s+budget|device\s+budget|"
                     r"\(budget;",
                     re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    """Every tracked file that is text (code, configs, tests, docs, README, results JSON)."""
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    paths = [ROOT / name for name in names if Path(name).suffix in TEXT_SUFFIXES or name == "Makefile"]
    return [path for path in paths if path.is_file() and b"\0" not in path.read_bytes()[:4096]]


def anchors(page: Path) -> set[str]:
    """Explicit ``<a id>`` anchors and the GitHub slugs of the headings."""
    text = page.read_text()
    found = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def test_every_cited_section_exists():
    cited = {(path, page, anchor) for path in SOURCES for page, anchor in CITATION.findall(path.read_text())}
    cited |= {(path, page, anchor) for path in tracked_text_files() if path.suffix in (".yaml", ".md")
              for page, anchor in CITATION.findall(path.read_text())}
    assert len(cited) >= 10  # the design sections are cited where the code relies on them
    missing = [f"{path.relative_to(ROOT)}: docs/{page}.md#{anchor}" for path, page, anchor in sorted(cited)
               if not (ROOT / "docs" / f"{page}.md").is_file() or anchor not in anchors(ROOT / "docs" / f"{page}.md")]
    assert not missing, "citations of sections that do not exist: " + ", ".join(missing)


def test_nothing_cites_documents_outside_the_repository():
    files = tracked_text_files()
    assert any(path.name == "README.md" for path in files) and any(path.suffix == ".yaml" for path in files)
    hits = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)!r}"
            for path in files if path.name != "test_docs_citations.py"
            for text in [path.read_text(errors="replace")] for match in OUTSIDE.finditer(text)]
    assert not hits, "say what the software does, cite docs/ pages: " + "; ".join(hits)
