"""The README's usage section matches `upscaler --help`: every option it shows exists in
that subcommand's parser, and every option of a subcommand is shown (or, for the options
several subcommands share, named by the placeholder the line uses)."""

import re
from pathlib import Path

import pytest

from pipeline.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# Placeholders in the usage lines, and the parser options each stands for.
PLACEHOLDERS = {"[run options]": "run", "[execution options]": "run"}


def usage_lines() -> dict[str, str]:
    block = README.split("## Usage", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"upscaler (\w+)", line)
        if match:
            current = match.group(1)
            lines[current] = lines.get(current, "") + " " + line.split("#", 1)[0]
        elif line.startswith(" ") and current:
            lines[current] += " " + line.split("#", 1)[0]
        else:
            current = None
    return lines


def options_of(command: str) -> set[str]:
    """The subcommand's own options: not -h, nor the global ones (-v), which the README
    says go anywhere."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "Subcommands").choices[command]
    global_options = {o for a in parser._actions for o in a.option_strings}
    return {o for a in sub._actions for o in a.option_strings} - global_options


def shown(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", text))


COMMANDS = sorted(usage_lines())


def test_the_usage_section_shows_every_subcommand():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.__class__.__name__ == "Subcommands").choices
    assert set(COMMANDS) == set(subcommands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_the_readme_shows_exists(command):
    global_options = {o for a in build_parser()._actions for o in a.option_strings}
    assert shown(usage_lines()[command]) - options_of(command) - global_options == set()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_a_subcommand_is_in_the_readme(command):
    line = usage_lines()[command]
    covered = shown(line)
    for placeholder, other in PLACEHOLDERS.items():
        if placeholder in line:
            covered |= options_of(other)
    assert options_of(command) - covered == set()
