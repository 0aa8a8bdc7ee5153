"""The documentation keeps step with the code: every command of ``selfsup --help`` has a README
paragraph and a page in docs/, every long option of ``selfsup CMD --help`` appears on that page,
no page or README names an option that no parser has, every training and method setting is
documented, and every docs/ link resolves."""
import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from selfsup.cli import build_parser
from selfsup.config import TrainConfig
from selfsup.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w-])")
# flags of other programs the pages show (torchrun, pytest, ...)
FOREIGN = {"--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend", "--rdzv_endpoint", "--standalone",
           "--help", "--version",
           "--trial",      # benchmarks/tune.py, in docs/bench.md
           "--headless",   # chromium, in docs/report.md
           "--logdir"}     # tensorboard, in docs/tensorboard.md


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _options(p: argparse.ArgumentParser) -> set[str]:
    """Long options of a parser and of its own sub-commands (``data shard --out``), without --help."""
    opts = {o for a in p._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    for sp in _subparsers(p).values():
        opts |= _options(sp)
    return opts


COMMANDS = _subparsers(build_parser())
ALL_OPTIONS = set().union(*(_options(p) for p in COMMANDS.values()))


def _mentioned(text: str) -> set[str]:
    return {m.group(0) for m in OPTION.finditer(text)}


def _gpu_check_options() -> set[str]:
    spec = importlib.util.spec_from_file_location("gpu_check_for_docs", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return _options(mod.build_parser())


def _benchmark_script_options() -> set[str]:
    """The options the scripts under benchmarks/ declare (docs/bench.md describes those scripts)."""
    found = set()
    for path in (ROOT / "benchmarks").glob("*.py"):
        found |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", path.read_text()))
    return found


def test_the_parser_has_the_commands_the_docs_expect():
    assert {"train", "eval", "bench", "embed", "export", "report", "data", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_a_page_and_a_readme_paragraph(command):
    assert (DOCS / f"{command}.md").is_file(), f"docs/{command}.md is missing"
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^- \*\*`selfsup {command}\b[^`]*`\*\*", readme, re.M), f"README has no paragraph on {command}"
    assert f"(docs/{command}.md)" in readme, f"README does not link docs/{command}.md"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_of_a_command_is_on_its_page(command):
    page = (DOCS / f"{command}.md").read_text()
    missing = _options(COMMANDS[command]) - _mentioned(page)
    assert not missing, f"docs/{command}.md does not mention {sorted(missing)} (in selfsup {command} --help)"


def _usage_and_table_options(page: str, command: str) -> list[tuple[str, str]]:
    """(option, line) for what a page presents as its command's options: the rows of its option
    tables and the usage lines in code blocks (``selfsup COMMAND ...`` and their indented continuations)."""
    out, in_code, in_usage = [], False, False
    for line in page.splitlines():
        if line.startswith("```"):
            in_code, in_usage = not in_code, False
            continue
        if in_code:
            in_usage = line.startswith(f"selfsup {command}") or (in_usage and line.startswith(" "))
            if in_usage:
                out += [(opt, line) for opt in _mentioned(line)]
        elif line.startswith("| `--"):
            out += [(opt, line) for opt in _mentioned(line.split("|")[1])]
    return out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_page_presents_no_option_its_command_lacks(command):
    own = _options(COMMANDS[command])
    bad = [(opt, line.strip()[:80]) for opt, line in _usage_and_table_options((DOCS / f"{command}.md").read_text(), command)
           if opt not in own]
    assert not bad, f"docs/{command}.md presents options selfsup {command} --help lacks: {bad}"


def test_no_page_names_an_option_no_parser_has():
    gpu = _gpu_check_options()
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        allowed = ALL_OPTIONS | FOREIGN | (gpu if path.name in ("gpu-check.md", "bench.md") else set()) \
            | (_benchmark_script_options() if path.name == "bench.md" else set())
        unknown = _mentioned(path.read_text()) - allowed
        assert not unknown, f"{path.name} names options no parser has: {sorted(unknown)}"


def test_the_gpu_check_page_documents_every_option():
    missing = _gpu_check_options() - _mentioned((DOCS / "gpu-check.md").read_text())
    assert not missing, f"docs/gpu-check.md does not mention {sorted(missing)}"


def test_every_training_setting_is_documented():
    page = (DOCS / "train.md").read_text()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("method", "data"):   # the METHOD argument and --data
            continue
        assert f"| `{f.name}` |" in page, f"docs/train.md has no row for the setting {f.name}"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_setting_is_documented(name):
    page = (DOCS / "methods.md").read_text()
    section = page.split(f"\n### {name}\n", 1)
    assert len(section) == 2, f"docs/methods.md has no section ### {name}"
    body = section[1].split("\n### ", 1)[0]
    for f in dataclasses.fields(METHODS[name].Config):
        assert f"| `{f.name}` |" in body, f"docs/methods.md, {name}: no row for the setting {f.name}"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_training_defaults_line_matches_the_code(name):
    body = (DOCS / "methods.md").read_text().split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
    cls = METHODS[name]
    line = next((ln for ln in body.splitlines() if ln.startswith("Training defaults: ")), None)
    assert line is not None, f"docs/methods.md, {name}: no 'Training defaults:' line"
    listed = ", ".join(f"{k}={v}" for k, v in cls.train_defaults.items())
    assert line.startswith(f"Training defaults: `{listed}`"), f"docs/methods.md, {name}: {line!r} is not `{listed}`"
    for fam, over in cls.family_defaults.items():
        label = {"vit": "a ViT backbone", "conv": "a conv backbone"}[fam]
        want = f"with {label}: `{', '.join(f'{k}={v}' for k, v in over.items())}`"
        assert want in line, f"docs/methods.md, {name}: the line does not say {want!r}"


def test_links_between_pages_resolve():
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            assert (path.parent / target).resolve().is_file(), f"{path.name}: broken link {target}"
