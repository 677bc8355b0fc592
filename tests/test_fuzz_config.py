"""Bad input fuzzing (issue 5, fault 8): hypothesis writes YAML configs and dotted overrides.

Wrong types, unknown keys, huge and negative numbers, unicode, control characters, YAML
tags that would run code under an unsafe loader, and text that is not YAML at all. In
process, every case ends as a valid `Config` or a `UsageError` whose lines are each one
`error: ...` line; through the real command (`python -m ae_dist.train`), as exit 0 or exit
2 with only such lines on stderr: never a traceback, and never code execution (the tags
would create a marker file; it must not exist).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ae_dist.config import Config, choices, from_dict, leaf_fields, load_config, to_dict, validate
from ae_dist.errors import UsageError
from tests.helpers.commands import REPO, run_module
from tests.helpers.faults import report

KEYS = sorted(leaf_fields())
CHOICES = [choice for kind, _ in leaf_fields().values() for choice in choices(kind)]  # every Literal field's words
SECTIONS = sorted({key.split(".")[0] for key in KEYS})
# Tags that name Python code: an unsafe loader would call os.system / subprocess / exec.
CODE_TAGS = (
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/apply:subprocess.call [["touch", "{marker}"]]',
    "!!python/object/new:builtins.exec [\"open('{marker}', 'w').close()\"]",
    "!!python/object/apply:builtins.eval [\"open('{marker}', 'w').close()\"]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:builtins.object {}",
)
OTHER_TAGS = ("!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14t21:59:43.10-05:00", "!!omap [a: 1]",
              "!!float 1e400", "!!int 0x_ff", "!!str 3", "!!null", "!custom 7", "!!python/tuple [1, 2]", "&a [*a]",
              "*undefined_alias", "{a: [", "'unterminated", "\"\\x\"", "|\n  block")
TRICKY_TEXT = ("1e-3", "0x10", "0o17", "1_000", "-0", "nan", "-inf", "1e999", "9" * 5000, "yes", "off", "~", "[]",
               "{}", "1,2,3", "[1,,2]", "", " ", "\u202e", "\U0001f4a5", "2001-12-14", "a\nb", "\x1b[31mred", "\t",
               "../../etc/passwd", "x" * 300, "C:\\path", "é")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(TRICKY_TEXT),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=6)
plausible = st.one_of(st.integers(min_value=0, max_value=100), st.floats(min_value=1e-6, max_value=1.0), st.booleans(),
                      st.sampled_from(CHOICES),
                      st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=3))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + "x"), st.sampled_from(KEYS).map(str.upper),
                 st.sampled_from(SECTIONS), st.text(max_size=15))


@st.composite
def yaml_documents(draw) -> bytes:
    """A config file: dumped key/values, then lines with tags, or text that is not YAML."""
    kind = draw(st.sampled_from(["plausible", "plausible", "tree", "tree", "tagged", "text", "bytes"]))
    if kind == "text":
        return draw(st.one_of(st.text(max_size=80), st.sampled_from(TRICKY_TEXT))).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    tree: dict = {}
    pairs = st.tuples(st.sampled_from(KEYS), plausible) if kind == "plausible" else st.tuples(keys, values)
    for key, value in draw(st.lists(pairs, max_size=3 if kind == "plausible" else 6)):
        section, _, name = key.partition(".")
        if name and isinstance(tree.setdefault(section, {}), dict):
            tree[section][name] = value
        else:
            tree[key] = value
    text = yaml.safe_dump(tree, allow_unicode=True) if tree else ""
    if kind == "tagged":
        for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)):
            section, name = key.split(".")
            tag = draw(st.sampled_from(CODE_TAGS + OTHER_TAGS))
            text += f"{section}:\n  {name}: {tag}\n"
    return text.encode("utf-8", "surrogatepass")


def overrides(argv_safe: bool) -> st.SearchStrategy[list[str]]:
    value_text = st.one_of(st.text(max_size=20), st.sampled_from(TRICKY_TEXT), values.map(str),
                           st.sampled_from(CODE_TAGS).map(lambda tag: tag.replace("{marker}", "/tmp/never")))
    item = st.one_of(st.tuples(keys, value_text).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=15))
    if argv_safe:  # a command line cannot carry NUL or lone surrogates
        item = item.filter(lambda s: "\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
    as_text = plausible.map(lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v))
    likely = st.tuples(st.sampled_from(KEYS), as_text).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.one_of(st.just([]), st.lists(likely, max_size=2), st.lists(item, max_size=4))


def check_usage_error(err: UsageError) -> None:
    lines = err.lines()
    assert lines
    for line in lines:
        assert line.startswith("error: ") and line.isprintable(), repr(line)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter]:
    """How the generated cases ended; one row of the fault table once the module is done."""
    counts: Counter = Counter()
    yield counts
    if counts["config"] + counts["refused"]:
        report("bad input (fuzzed)", f"hypothesis: {counts['config'] + counts['refused']} YAML files + dotted "
               f"overrides loaded in process, {counts['exit 0'] + counts['exit 2']} through `python -m ae_dist.train`; "
               "wrong types, unknown keys, huge/negative numbers, unicode, control characters, `!!python/...` tags",
               f"{counts['config']} valid configs, {counts['refused']} refused with one-line `error:` lines; commands: "
               f"{counts['exit 0']} exit 0, {counts['exit 2']} exit 2; no traceback; the tags' marker file never "
               "appeared", "none", "none")


def write_document(folder: Path, name: str, document: bytes) -> tuple[Path, Path]:
    """Write a fuzzed YAML file; its code-running tags would create the returned marker file."""
    marker, path = folder / f"code-ran-{name}", folder / f"{name}.yaml"
    path.write_bytes(document.replace(b"{marker}", str(marker).encode()))
    return path, marker


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=yaml_documents(), items=overrides(argv_safe=False))
def test_loading_any_config_gives_a_config_or_one_line_errors(fuzz_dir: Path, tally: Counter, document: bytes,
                                                              items: list[str]) -> None:
    path, marker = write_document(fuzz_dir, "config", document)
    try:
        config = load_config(path, items)
    except UsageError as err:
        check_usage_error(err)
        tally["refused"] += 1
    else:
        assert isinstance(config, Config) and validate(config) == []
        saved = yaml.safe_load(yaml.safe_dump(to_dict(config), allow_unicode=True))
        assert from_dict(saved) == config  # what config.yaml and checkpoints save reloads to the same tree
        tally["config"] += 1
    assert not marker.exists(), "a YAML tag ran code"


def run_command(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return run_module("ae_dist.train", *args, tmp=tmp, cwd=REPO, timeout=120)


def check_exit(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (0, 2), f"exit {result.returncode}\n{result.stderr[-3000:]}"
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert errors and all(line.startswith("error: ") for line in errors), result.stderr[-3000:]


# Whatever else the fuzz sets, a valid run stays small and fast: these come last, so they win.
SMALL_RUN = ["data.name=synthetic", "data.synthetic_train=64", "data.synthetic_test=16", "train.epochs=1",
             "train.batch_size=32", "train.compile=off", "model.name=mlp", "model.hidden=8", "train.device=cpu",
             "wandb.mode=disabled", "train.threads=1"]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=yaml_documents(), items=overrides(argv_safe=True))
def test_the_command_exits_0_or_with_one_line_errors(fuzz_dir: Path, tally: Counter, document: bytes,
                                                     items: list[str]) -> None:
    path, marker = write_document(fuzz_dir, "command", document)
    run_dir = fuzz_dir / f"run-{abs(hash((document, tuple(items))))}"
    result = run_command(["--config", str(path), *items, *SMALL_RUN, f"run.dir={run_dir}"], fuzz_dir)
    check_exit(result)
    tally[f"exit {result.returncode}"] += 1
    assert not marker.exists(), "a YAML tag ran code"


def test_code_tags_never_run(tmp_path: Path) -> None:
    markers = [tmp_path / f"code-ran-{i}" for i in range(4)]
    lines = [f"  {key}: {tag.replace('{marker}', str(marker))}"
             for key, tag, marker in zip(("epochs", "seed", "log_every", "resume"), CODE_TAGS, markers)]
    path = tmp_path / "evil.yaml"
    path.write_text("train:\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(yaml.constructor.ConstructorError):  # each line is code to an unsafe loader
        for line in lines:
            yaml.safe_load("train:\n" + line)
    result = run_command(["--config", str(path), f"run.dir={tmp_path / 'run'}"], tmp_path)
    check_exit(result)
    assert result.returncode == 2 and str(path) in result.stderr
    assert not any(marker.exists() for marker in markers), "a YAML tag ran code"


REFUSED = {  # values that parse but would crash or hang a run later: refused up front, each naming its key
    "model.hidden": "100000000,100000000",  # 1.6e11 weights
    "data.synthetic_train": "100000000000",
    "train.threads": "100000000000",
    "train.seed": "9" * 40,
    "dist.timeout_s": "1e300",
    "run.dir": "x" * 300,  # a longer name than file systems allow
    "data.root": "a\0b",
}


@pytest.mark.fast
@pytest.mark.parametrize("key", REFUSED)
def test_extreme_values_are_refused(key: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_config(None, [f"{key}={REFUSED[key]}"])
    check_usage_error(caught.value)
    assert f"({key})" in caught.value.lines()[0]


@pytest.mark.fast
def test_conv_with_more_than_6_stages_is_refused() -> None:
    with pytest.raises(UsageError, match=r"\(model.channels\)"):
        load_config(None, ["model.name=conv", "model.channels=8,8,8,8,8,8,8"])


def test_the_command_refuses_extreme_values_in_one_line_each(tmp_path: Path) -> None:
    refused = {key: value for key, value in REFUSED.items() if "\0" not in value}  # argv cannot carry NUL
    result = run_command([*SMALL_RUN, *(f"{key}={value}" for key, value in refused.items())], tmp_path)
    check_exit(result)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == len(refused), result.stderr
    for key in refused:
        assert sum(f"({key})" in line for line in lines) == 1, (key, lines)


def test_huge_but_harmless_values_run(tmp_path: Path) -> None:
    result = run_command([*SMALL_RUN, f"run.dir={tmp_path / 'run'}", "checkpoint.every_steps=" + "9" * 30,
                          "train.log_every=" + "9" * 30, "train.eval_batch_size=16777216", "checkpoint.keep=" + "9" * 30,
                          "train.seed=4611686018427387904"], tmp_path)
    check_exit(result)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "model.pt").exists()


@pytest.mark.fast
def test_deeply_nested_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("train: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        load_config(path)
    check_usage_error(caught.value)
