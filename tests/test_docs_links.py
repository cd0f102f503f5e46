"""Every relative link in README.md and docs/*.md resolves: the file exists and the #anchor is a heading of it (GitHub's
slugs) or an explicit id; and every docs page is reachable from the README."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXPLICIT_ID = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def prose(text):
    """The text without fenced code blocks (a `#` comment in a bash block is no heading, a link in code no link)."""
    return FENCE.sub("", text)


def github_slug(heading):
    """GitHub's anchor for a heading: its rendered text in lower case, punctuation other than '-' and '_' dropped,
    each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page):
    """Every anchor of a page: heading slugs (a repeated slug gets -1, -2, ... as on GitHub) and explicit ids."""
    text = prose(page.read_text())
    found, seen = set(), {}
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found | set(EXPLICIT_ID.findall(text))


def relative_links(page):
    targets = LINK.findall(INLINE_CODE.sub("", prose(page.read_text())))
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_github_slugs_follow_githubs_rules():
    assert github_slug("Training and evaluation: `run_clm_audio.py`") == "training-and-evaluation-run_clm_audiopy"
    assert github_slug("Mamba-1 mixer (scan)") == "mamba-1-mixer-scan"
    assert github_slug("The main job: the published comparison in miniature") == (
        "the-main-job-the-published-comparison-in-miniature"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading or id #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link (add a line to its feature list): {unlinked}"
