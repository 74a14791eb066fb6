"""The README and docs/ pages hold: every relative link resolves, every `encvit ...` command they show parses."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from encvit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000


def _links(text: str) -> list[str]:
    """Targets of Markdown links and images, without anchors; external and mail links left out."""
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t.split("#")[0]]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.S)


def shown_commands(text: str) -> list[list[str]]:
    """Each `encvit ...` (or `torchrun ... -m encvit.cli ...`) command in the page's code blocks, as argv after
    `encvit`."""
    commands = []
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not (line.startswith("encvit ") or "encvit.cli" in line):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise AssertionError(f"cannot split the shown command {line!r}: {exc}") from None
            if words[:1] == ["encvit"]:
                commands.append(words[1:])
            elif "encvit.cli" in words:
                commands.append(words[words.index("encvit.cli") + 1 :])
    # `[--flag VALUE]` marks an optional part of a usage line: the flag must still exist.
    return [[w.strip("[]") for w in c if w.strip("[]")] for c in commands]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def unknown_parts(argv: list[str]) -> list[str]:
    """Subcommands and flags of `argv` that the parser does not know (empty when the command is valid)."""
    parser, rest = build_parser(), list(argv)
    while rest and (choices := _subparsers(parser)):
        name = rest.pop(0)
        if name not in choices:
            return [f"subcommand {name!r} (known: {', '.join(choices)})"]
        parser = choices[name]
    flags = [w.split("=")[0] for w in rest if w.startswith("-") and not re.fullmatch(r"-[\d.e]+", w)]
    return [f"flag {f}" for f in flags if f not in parser._option_string_actions]


@pytest.mark.parametrize("doc", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    broken = [t for t in _links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


@pytest.mark.parametrize("doc", PAGES, ids=lambda p: p.name)
def test_shown_commands_name_real_subcommands_and_flags(doc):
    problems = {" ".join(c): unknown_parts(c) for c in shown_commands(doc.read_text())}
    problems = {c: p for c, p in problems.items() if p}
    assert not problems, f"{doc.relative_to(ROOT)} shows commands the CLI does not have: {problems}"


def test_the_checks_catch_a_bad_command_and_a_broken_link(tmp_path):
    assert unknown_parts(["train", "--method", "melo", "--epochs", "3"]) == []
    assert unknown_parts(["trian"])[0].startswith("subcommand 'trian'")
    assert unknown_parts(["keygen", "-o", "k.json", "--blocksize", "4"]) == ["flag --blocksize"]
    page = "```bash\nencvit encrypt --key k.json a.png -o out [--resize 32x32] [--bogus]\n```\n[x](missing.md)"
    assert [unknown_parts(c) for c in shown_commands(page)] == [["flag --bogus"]]
    assert _links(page) == ["missing.md"] and not (tmp_path / "missing.md").exists()


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= README_LIMIT, f"README.md has {len(text):,} characters; at most {README_LIMIT:,}"
    first_block = _code_blocks(text)[0].strip().splitlines()
    assert first_block == ["make demo", "make test"]


def test_every_docs_page_is_linked_from_the_readme():
    readme_links = set(_links((ROOT / "README.md").read_text()))
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme_links]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def named_code(text: str) -> tuple[set[str], set[str]]:
    """The dotted names (`encvit.cipher.Key`) and file paths (`encvit/fhe/server.py`) a page names."""
    dotted = set(re.findall(r"\bencvit(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    # `from encvit import attack_demo as a` names encvit.attack_demo
    for module, names in re.findall(r"\bfrom (encvit[\w.]*) import ([\w ,]+)", text):
        dotted |= {f"{module}.{name.split()[0]}" for name in names.split(",") if name.strip()}
    paths = set(re.findall(r"\bencvit/[A-Za-z0-9_/.-]*[A-Za-z0-9_]", text))
    return dotted, paths


def resolves(dotted: str) -> bool:
    """Whether `encvit.a.b.c` is a module or an attribute reachable from one."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                value = getattr(value, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", PAGES, ids=lambda p: p.name)
def test_every_module_and_file_a_page_names_exists(doc):
    dotted, paths = named_code(doc.read_text())
    # a path may be an output prefix (`--out encvit/fhe/runs/projection-tokens768` writes .csv and .png)
    found = {p for p in paths if (ROOT / p).exists() or any((ROOT / p).parent.glob(f"{Path(p).name}.*"))}
    missing = sorted(d for d in dotted if not resolves(d)) + sorted(paths - found)
    assert not missing, f"{doc.relative_to(ROOT)} names code that does not exist: {missing}"


def test_the_name_check_catches_a_moved_module():
    dotted, paths = named_code("see `encvit.train.TrainConfig` in encvit/train.py and `encvit.cipher.Key`")
    assert dotted == {"encvit.train.TrainConfig", "encvit.cipher.Key"} and paths == {"encvit/train.py"}
    shown, _ = named_code("from encvit import attack_demo as a, cipher\nfrom encvit.demo import viz")
    assert {"encvit.attack_demo", "encvit.cipher", "encvit.demo.viz"} <= shown
    assert not resolves("encvit.attack_demo") and resolves("encvit.demo.viz")
    assert not resolves("encvit.train.TrainConfig") and resolves("encvit.cipher.Key")
    assert not (ROOT / "encvit/train.py").exists()
