"""Every section of docs/caffe-semantics.md that the code cites (`.md#<heading anchor>`) exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "caffe-semantics.md"
CITE = re.compile(r"caffe-semantics\.md#([a-z0-9-]+)")


def anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return out


def citations() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in ("hovcaffe", "tests", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and path.is_file():
                for anchor in CITE.findall(path.read_text(errors="replace")):
                    found.setdefault(anchor, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_anchor_rule_on_known_headings():
    have = anchors()
    assert {"pooling-and-spp", "softmax-losses-and-accuracy", "hdf5data", "the-net"} <= have


def test_every_citation_names_a_section():
    have = anchors()
    cited = citations()
    assert len(cited) >= 15  # the layer families, the net, the solver and the files cite it
    missing = {a: sorted(where) for a, where in cited.items() if a not in have}
    assert not missing, f"sections cited but not in {DOC.name}: {missing}"


def test_no_numbered_section_citations_remain():
    # Section numbers moved whenever the page changed; names do not.
    old = re.compile(r"(semantics[^\n]{0,12}§\s*\d|§\d+\.\d)")
    bad = [str(p.relative_to(ROOT)) for p in (ROOT / "hovcaffe").rglob("*.py") if old.search(p.read_text())]
    bad += [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
            if p.name != Path(__file__).name and old.search(p.read_text())]
    assert not bad
