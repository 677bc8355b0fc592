"""The README and docs/ speak for the code: every command in a ``bash`` block still parses with the real
parsers (config keys and values included), every file they link or name exists, every generated part is current.

A command is checked in process, without running it: the trainer's and the launcher's own argument parsers and
config loading, torchrun's parser, argparse of the benchmarks, the files that bash, sbatch, pytest and wandb name.
A command of a kind no checker knows fails, so a new kind of documented command comes with its check.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from ae_dist.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USAGE, UsageError

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NAMED_PATH = re.compile(r"(?<![\w./~-])((?:ae_dist|launch|configs|slurm|tests|benchmarks|docs|\.ci)/[\w.*/-]*\w)")
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b|mycluster")  # configs/NAME.yaml, the profile a user makes
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_commands(page: Path) -> list[tuple[str, list[str]]]:
    """``(page:line, tokens)`` for each command of each bash block: continuations joined, comments dropped,
    ``a && b`` split in two."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in BASH_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block[1].split("\n")
        index = 0
        while index < len(lines):
            start, line = index, lines[index]
            while line.endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line[:-1] + " " + lines[index]
            index += 1
            tokens = shlex.split(line, comments=True)
            where = f"{page.relative_to(ROOT)}:{first_line + start}"
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                found.append((where, tokens[:cut]))
                tokens = tokens[cut + 1:]
    return found


COMMANDS = [item for page in PAGES for item in documented_commands(page)]


class Parsed(Exception):
    """Raised by argparse instead of returning: the arguments parsed, nothing ran."""


def parse_only(monkeypatch: pytest.MonkeyPatch, call, argv: list[str]) -> None:
    """Run ``call(argv)`` until its argparse has parsed ``argv``; a parse error fails."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        call(argv)


def check_train(args: list[str]) -> None:
    from ae_dist.config.cli import train_args

    try:
        train_args(args)
    except SystemExit as stop:  # --help
        assert stop.code in (0, None), f"exit {stop.code}"


def check_evaluate(args: list[str]) -> None:
    from ae_dist.config.cli import evaluate_args
    from ae_dist.config.schema import load_config

    parsed = evaluate_args(args)
    load_config(None, parsed.overrides)


def check_launch(args: list[str]) -> None:
    from ae_dist.config import load_config
    from launch import cli

    if args and args[0] in cli.SUBCOMMANDS[1:]:
        parsed = cli.job_parser(args[0]).parse_args(args[1:])
        cli.request_of(parsed)
        return
    parsed = cli.submit_parser().parse_intermixed_args(args)
    cli.request_of(parsed)
    load_config(parsed.config, parsed.overrides)


def check_torchrun(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(args)
    assert parsed.module, "torchrun runs a module here (-m ...)"
    check_python(["-m", parsed.training_script, *parsed.training_script_args], monkeypatch)


def check_module_main(module_name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(module_name)
    entry = getattr(module, "parse_args", None) or module.main
    assert inspect.signature(entry).parameters, f"{module_name}.{entry.__name__} takes no argv: make it main(argv)"
    parse_only(monkeypatch, entry, args)


def check_pytest(args: list[str]) -> None:
    markers = {line.split(":")[0].strip() for line in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    index = 0
    while index < len(args):
        token = args[index]
        if token == "-m":
            index += 1
            words = set(re.findall(r"\w+", args[index])) - {"and", "or", "not"}
            assert words <= markers, f"undeclared marker(s) {sorted(words - markers)}"
        elif token in ("-n", "--dist", "-k", "-p"):
            index += 1
        elif not token.startswith("-"):
            assert (ROOT / token.split("::")[0]).exists(), f"no such test path {token}"
        index += 1


def check_python(args: list[str], monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    if args[:1] != ["-m"]:
        script = ROOT / args[0]
        assert script.is_file(), f"no such script {args[0]}"
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parse_only(monkeypatch, module.main, args[1:])
        return
    module, rest = args[1], args[2:]
    if module in ("ae_dist", "ae_dist.train"):
        check_train(rest)
    elif module == "ae_dist.evaluate":
        check_evaluate(rest)
    elif module == "launch":
        check_launch(rest)
    elif module == "pytest":
        check_pytest(rest)
    elif module == "venv":
        assert rest == [".venv"], rest
    elif module.startswith("benchmarks."):
        check_module_main(module, rest, monkeypatch)
    else:
        raise AssertionError(f"no check for python -m {module}: add one to tests/test_docs.py")


def check_pip(args: list[str]) -> None:
    assert args[0] == "install", args
    extras = PYPROJECT["project"]["optional-dependencies"]
    for token in args[1:]:
        found = re.fullmatch(r"\.(?:\[(\w+(?:,\w+)*)\])?", token)
        assert found or token == "-e", f"pip install of {token}: install the project (. or .[extra])"
        for extra in (found[1].split(",") if found and found[1] else []):
            assert extra in extras, f"no extra {extra!r} in pyproject.toml"


def check_bash(args: list[str]) -> None:
    script = ROOT / args[0]
    assert script.is_file(), f"no such script {args[0]}"
    if len(args) > 1 and re.search(r"^\s*case ", script.read_text(encoding="utf-8"), re.MULTILINE):
        assert re.search(rf"^\s*{re.escape(args[1])}(\|\w+)*\)", script.read_text(encoding="utf-8"), re.MULTILINE), \
            f"{args[0]} has no command {args[1]!r}"


def check_sbatch(args: list[str]) -> None:
    script = next(token for token in args if not token.startswith("-"))
    rest = args[args.index(script) + 1:]
    assert (ROOT / script).is_file(), f"no such batch script {script}"
    if script in ("slurm/train.sbatch", "slurm/train-elastic.sbatch"):  # the trainer's own arguments
        check_train(rest)


def check_wandb(args: list[str]) -> None:
    if args[0] == "sweep":
        sweep = yaml.safe_load((ROOT / args[1]).read_text(encoding="utf-8"))
        assert "ae_dist.train" in sweep["command"], f"{args[1]} does not run the trainer"
    else:
        assert args[0] == "agent", args


def check_env(assignments: dict[str, str]) -> None:
    for name, value in assignments.items():
        if name == "PYTHONPATH":
            for folder in value.split(":"):
                assert (ROOT / folder).is_dir(), f"PYTHONPATH names {folder}, which does not exist"
        if name == "AE_DIST_TEST_HOOK":
            assert (ROOT / (value.replace(".", "/") + ".py")).is_file(), f"no test hook module {value}"


def check_command(tokens: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assignments = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        assignments[name] = value
    check_env(assignments)
    if tokens[0] == "sudo":
        tokens = tokens[1:]
    program, args = tokens[0].removeprefix(".venv/bin/"), tokens[1:]
    if program in ("python", "python3", "python3.11"):
        check_python(args, monkeypatch)
    elif program == "torchrun":
        check_torchrun(args, monkeypatch)
    elif program == "pip":
        check_pip(args)
    elif program == "bash":
        check_bash(args)
    elif program == "eval":  # eval "$(bash slurm/cluster.sh env)"
        inner = re.fullmatch(r"\$\((.*)\)", args[0])
        assert inner, f"eval of {args[0]!r}"
        check_command(shlex.split(inner[1]), monkeypatch)
    elif program == "sbatch":
        check_sbatch(args)
    elif program == "wandb":
        check_wandb(args)
    else:
        raise AssertionError(f"no check for the command {program!r}: add one to tests/test_docs.py")


@pytest.fixture
def docs_home(tmp_path, monkeypatch):
    """The repository as the working folder, and a home whose profile folder holds the `mycluster` that the
    docs tell a user to copy from configs/clusters/example.yaml."""
    home = tmp_path / "home"
    (home / ".config/ae-dist/clusters").mkdir(parents=True)
    shutil.copy(ROOT / "configs/clusters/example.yaml", home / ".config/ae-dist/clusters/mycluster.yaml")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(ROOT)
    return home


@pytest.mark.parametrize(("where", "tokens"), COMMANDS, ids=[f"{where} {' '.join(t)[:60]}" for where, t in COMMANDS])
def test_documented_command_parses(where, tokens, docs_home, monkeypatch):
    try:
        check_command(list(tokens), monkeypatch)
    except UsageError as err:
        raise AssertionError(f"{where}: {shlex.join(tokens)}\n{err.lines()}") from None
    except AssertionError as err:
        raise AssertionError(f"{where}: {shlex.join(tokens)}\n{err}") from None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    return {slug(match[1]) for match in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_and_named_files_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            missing.append(f"link {target}: no such file")
        elif anchor and anchor not in anchors(linked):
            missing.append(f"link {target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    for named in NAMED_PATH.findall(text):
        if not PLACEHOLDER.search(named) and not list(ROOT.glob(named)):
            missing.append(f"names {named}, which does not exist")
    assert not missing, f"{page.relative_to(ROOT)}: " + "; ".join(missing)


def test_generated_parts_are_current():
    generator = load_generator()
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert any(generator.BLOCK.search(page.read_text(encoding="utf-8")) for page in pages)
    assert generator.stale(pages) == [], "run: python docs/generate.py"


def test_readme_is_short_and_its_exit_table_is_the_code_s():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    table = {int(code) for code in re.findall(r"^\| (\d+) \|", text, re.MULTILINE)}
    assert table == {0, EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED, EXIT_INTERRUPTED}


def test_a_broken_command_is_caught(docs_home, monkeypatch):
    """The checks above fail on what they must: a misspelt key, a bad value, an unknown flag, a missing file."""
    for broken in (["python", "-m", "ae_dist.train", "--config", "configs/digits.yaml", "train.epoch=3"],
                   ["python", "-m", "ae_dist.train", "train.epochs=three"],
                   ["python", "-m", "launch", "--nodes", "2", "--gpu-count", "4"],
                   ["torchrun", "--nproc_per_node=2", "-m", "ae_dist.train", "model.name=resnet"],
                   ["sbatch", "slurm/train-gpu.sbatch"],
                   ["python", "-m", "benchmarks.throughput", "--thread-count", "1"],
                   ["python", "-m", "pytest", "-m", "quick"]):
        with pytest.raises((UsageError, AssertionError, SystemExit)):
            check_command(list(broken), monkeypatch)
            print("passed the check:", shlex.join(broken))
