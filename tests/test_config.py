"""Config: every shipped file loads; each bad input is one line and exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ae_dist.config import Config, build_config, choices, from_dict, leaf_fields, load_config, to_dict
from ae_dist.config.cli import help_text
from ae_dist.config.types import convert
from ae_dist.errors import UsageError
from tests.helpers.commands import PYTHON, REPO, clean_env

TRAINER_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.fast
@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path, ["data.path=/shared/images"] if path.stem == "images" else [])  # a template for a folder
    assert isinstance(config, Config)
    assert from_dict(to_dict(config)) == config  # what config.yaml saves reloads to the same tree


@pytest.mark.fast
def test_default_is_the_seed_experiment() -> None:
    config = load_config()
    assert (config.data.name, config.model.name, config.model.latent_dim) == ("fashion_mnist", "mlp", 3)
    assert config.model.hidden == (128, 64, 12)
    assert (config.optim.lr, config.optim.weight_decay) == (1e-3, 1e-5)
    assert (config.train.batch_size, config.train.epochs) == (64, 10)


@pytest.mark.fast
def test_overrides_are_typed_by_the_field() -> None:
    config = load_config(None, ["optim.lr=3e-3", "train.epochs=2", "data.download=false", "model.hidden=256,32"])
    assert config.optim.lr == 0.003 and isinstance(config.optim.lr, float)
    assert config.train.epochs == 2 and config.data.download is False
    assert config.model.hidden == (256, 32)


@pytest.mark.fast
def test_yaml_float_written_like_pyyaml_string_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n")  # PyYAML reads this as the string '1e-3'
    assert load_config(path).optim.lr == 0.001


@pytest.mark.fast
def test_all_problems_reported_at_once() -> None:
    with pytest.raises(UsageError) as err:
        build_config({"train.epoch": 3, "optim.lr": "fast", "model.name": "resnet"})
    lines = err.value.lines()
    assert len(lines) == 2  # unknown key and wrong type first; values are checked once types are right
    assert "did you mean train.epochs?" in lines[0]
    assert "optim.lr" in lines[1]


def test_help_lists_every_key_with_default_and_meaning() -> None:
    text = help_text()
    for key, (_, f) in leaf_fields().items():
        line = next(line for line in text.splitlines() if line.split()[:1] == [key])
        assert f.metadata["help"] in line
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "train.batch_size" in result.stdout and "GLOBAL" in result.stdout


BAD_INPUTS = {
    "unknown key": (["train.epoch=3"], "unknown config key", "did you mean train.epochs?"),
    "wrong type": (["train.epochs=three"], "wrong type, 'three' is not an integer", "give an integer"),
    "wrong list": (["model.hidden=1,x"], "'x' is not an integer", "give a list of integers"),
    "not a number": (["optim.lr=fast"], "'fast' is not a number", "give a number"),
    "lr not positive": (["optim.lr=0"], "invalid value", "optim.lr"),
    "negative lr": (["optim.lr=-1e-3"], "invalid value", "optim.lr"),
    "epochs below 1": (["train.epochs=0"], "invalid value", "train.epochs"),
    "unknown dataset": (["data.name=cifar"], "invalid value 'cifar'", "data.name"),
    "unknown model": (["model.name=resnet"], "invalid value 'resnet'", "model.name", "use one of mlp | conv"),
    "key in another section": (["train.lr=1"], "unknown config key", "(train.lr)", "did you mean optim.lr?"),
    "not key=value": (["epochs"], "override is not key=value", "train.epochs=3"),
    "missing config file": (["--config", "/nonexistent/x.yaml"], "config file not found", "/nonexistent/x.yaml"),
    "unknown packaged name": (["--config", "digitz"], "config file not found", "default, digits, digits_conv"),
}


def assert_one_error_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=str)
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    args, *needles = BAD_INPUTS[case]
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", "--config", str(REPO / "configs/digits.yaml"),
                             f"run.dir={tmp_path / 'run'}", *args], cwd=REPO, env=clean_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert_one_error_line(result, *needles)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_bad_yaml_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1\n")
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", "--config", str(path)], cwd=REPO,
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert_one_error_line(result, "not valid YAML", str(path))


def test_batch_not_divisible_by_world_size(tmp_path: Path) -> None:
    env = clean_env(tmp_path, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT="1")  # checked before any rank waits for another
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", "--config", str(REPO / "configs/digits.yaml"),
                             f"run.dir={tmp_path / 'run'}", "train.batch_size=63"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert_one_error_line(result, "does not divide by world size 2", "train.batch_size")


@pytest.mark.fast
def test_choices_are_the_fields_literal_types() -> None:
    literal = {key: choices(kind) for key, (kind, _) in leaf_fields().items() if choices(kind)}
    assert literal["data.name"] == ("fashion_mnist", "mnist", "digits", "synthetic", "folder", "array")
    assert literal["wandb.mode"] == ("", "online", "offline", "disabled")
    for key, allowed in literal.items():
        with pytest.raises(UsageError) as err:
            build_config({key: "no-such-choice"})
        assert f"({key})" in err.value.lines()[0] and " | ".join(a for a in allowed if a) in err.value.lines()[0]
        for value in allowed:
            needs = {"data.path": "images"} if key == "data.name" and value in ("folder", "array") else {}
            assert getattr(getattr(build_config({key: value, **needs}), key.split(".")[0]), key.split(".")[1]) == value


@pytest.mark.fast
def test_any_literal_of_words_converts() -> None:
    from typing import Literal

    kind = Literal["off", "reference", "upload"]  # as a field another section may add
    assert convert("upload", kind) == "upload"
    assert convert(False, kind) == "off"  # YAML 1.1 reads a bare `off` as false
    assert convert("bogus", kind) == "bogus"  # refused by validate(), with the other values
    with pytest.raises(ValueError, match="not one of the choices"):
        convert(["upload"], kind)


@pytest.mark.fast
def test_yaml_off_is_the_word_off(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: off\n", encoding="utf-8")
    assert load_config(path).train.compile == "off"


@pytest.mark.fast
def test_a_bare_name_is_a_packaged_config_and_a_path_is_a_file(tmp_path: Path, monkeypatch) -> None:
    assert load_config("digits") == load_config(REPO / "configs" / "digits.yaml")
    (tmp_path / "digits").write_text("train:\n  epochs: 7\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config("./digits").train.epochs == 7 and load_config("digits").train.epochs == 7  # a file wins
    assert load_config("digits_conv").model.name == "conv"


@pytest.mark.fast
def test_a_config_file_may_leave_a_key_to_the_command_line() -> None:
    """The packaged ``images`` experiment names no folder: the command line gives it; without one it is refused."""
    assert load_config("images", ["data.path=/shared/cells"]).data.path == "/shared/cells"
    with pytest.raises(UsageError, match="needs data.path"):
        load_config("images")
    with pytest.raises(UsageError, match="needs data.path"):  # an override that mends nothing leaves the file's problem
        load_config("images", ["train.epochs=3"])


@pytest.mark.fast
@pytest.mark.parametrize("text, key, line", [("train:\n  epochs: 1\nrun:\n  dir: x\ntrain:\n  seed: 2\n", "train", 5),
                                             ("train:\n  epochs: 1\n  epochs: 2\n", "train.epochs", 3)])
def test_a_key_written_twice_is_refused(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_config(path)
    name = key.split(".")[-1]
    assert err.value.lines() == [f"error: config file holds the key {key} twice ({path}:{line}): "
                                 f"keep one '{name}:'; YAML would silently keep the last"]


@pytest.mark.fast
def test_an_alias_is_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text("train:\n  epochs: &n 3\n  seed: *n\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"uses a YAML alias \(\*n\) \(.*alias.yaml:3\)"):
        load_config(path)


@pytest.mark.fast
def test_the_resolved_config_reloads_without_aliases() -> None:
    from ae_dist.config import dump_yaml

    text = dump_yaml(load_config("digits_conv"))
    assert "&" not in text and "*" not in text
