"""The front door and the CLI guide: every command has its own section in docs/cli.md, the
README stays short, and its test command is the one CI's full lane runs.

The site itself (links, anchors, the API reference read from the docstrings) is checked by
``mkdocs build --strict`` in CI's docs lane; these checks need nothing but the files.
"""

import re
from pathlib import Path

import attnmap.cli as cli

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


def _sections(markdown: str) -> set[str]:
    """The titles of a Markdown page's second-level sections (``## title``), code spans unwrapped."""
    return {m.group(1).replace("`", "").strip() for m in re.finditer(r"^## (.+)$", markdown, re.M)}


def test_every_command_has_a_section_in_the_cli_guide():
    sections = _sections((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    missing = [name for name in cli.main.commands if f"attnmap {name}" not in sections]
    assert not missing, f"docs/cli.md has no '## attnmap NAME' section for: {', '.join(missing)}"


def test_the_cli_guide_documents_no_command_that_does_not_exist():
    sections = _sections((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    documented = {s.split()[1] for s in sections if s.startswith("attnmap ") and len(s.split()) == 2}
    assert documented == set(cli.main.commands)


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def _fenced_lines(markdown: str) -> list[str]:
    return [line for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.M | re.S)
            for line in block.splitlines()]


def test_the_readme_test_command_is_ci_full_lane():
    readme = [line for line in _fenced_lines((ROOT / "README.md").read_text(encoding="utf-8"))
              if "pytest" in line and "pip install" in line]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("python3 -m venv .venv &&") and "pytest" in line]
    assert len(readme) == 1 and len(ci) == 1, (readme, ci)
    assert readme[0].strip() == ci[0]
