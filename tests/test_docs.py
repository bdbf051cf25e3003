"""The README stays a front door: short, no commit hashes or machine ceilings, and every file it
links to exists (the measurements and their history live in docs/ and RESULTS.md)."""

import re

from conftest import REPO


def test_readme_is_short_and_holds_no_history():
  text = (REPO / "README.md").read_text()
  assert len(text.splitlines()) <= 250 and len(text.encode()) <= 20_000
  assert not re.findall(r"`[0-9a-f]{7,40}`", text)      # commit hashes
  assert "GFLOP/s" not in text and "TFLOP/s" not in text  # machine ceilings


def test_readme_and_docs_links_exist():
  for page in [REPO / "README.md", REPO / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]:
    for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
      if not target.startswith(("http://", "https://")):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
