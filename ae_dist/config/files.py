"""Config files: where `--config NAME` is, and reading one safely into flat dotted keys.

    python -m ae_dist.train --config digits            # the packaged configs/digits.yaml
    python -m ae_dist.train --config my/experiment.yaml

YAML is read with a `yaml.SafeLoader` that also refuses aliases (``*name``: a few hundred bytes
of nested aliases expand to gigabytes, the "billion laughs") and repeated keys (YAML keeps
the last ``train:`` section silently). Each refusal is one `UsageError` naming the file, the
line and the key. Nothing here imports torch.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from ae_dist.errors import UsageError


def packaged_configs() -> Path:
    """The shipped experiments (and cluster profiles in clusters/).

    In a source checkout (an editable install, PYTHONPATH) that is the repository's ``configs/``;
    in an installed wheel it is the copy inside the package, ``ae_dist/configs`` (pyproject.toml
    maps the one onto the other).
    """
    checkout = Path(__file__).resolve().parents[2]  # ae_dist/config/files.py -> the repository
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "default.yaml").is_file():
        return checkout / "configs"
    return Path(str(importlib.resources.files("ae_dist.configs")))


PACKAGED_CONFIGS = packaged_configs()  # experiments; cluster profiles in clusters/
DEFAULT_CONFIG = PACKAGED_CONFIGS / "default.yaml"


def packaged_names() -> list[str]:
    return sorted(path.stem for path in PACKAGED_CONFIGS.glob("*.yaml"))


def find_config(name: str | Path | None) -> Path:
    """``--config``: None = the packaged default.yaml; a bare name (``digits``) = a packaged config; else a path."""
    if name is None:
        return DEFAULT_CONFIG
    if isinstance(name, Path):
        return name
    path = Path(name).expanduser()
    if path.is_file() or "/" in name or name.endswith((".yaml", ".yml")) or name.startswith((".", "~")):
        return path
    return PACKAGED_CONFIGS / f"{name}.yaml"


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's flat values; a missing one is answered with the packaged names."""
    names = ", ".join(packaged_names())
    return read_yaml(path, missing_fix=f"give a packaged config ({names}) or a path to a YAML file")


class _Refused(Exception):
    def __init__(self, what: str, mark: yaml.Mark | None, fix: str):
        super().__init__(what)
        self.what, self.mark, self.fix = what, mark, fix


class ConfigLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader that stops at the first alias (``*name``) instead of expanding it."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"uses a YAML alias (*{event.anchor[:40]})", event.start_mark,
                           "write the value out: aliases (*name) are not allowed in configs")
        return super().compose_node(parent, index)


def _repeated_key(root: yaml.Node) -> tuple[str, yaml.Mark] | None:
    """The first key that a mapping holds twice, as a dotted path, and where its second copy is."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                if isinstance(key_node, yaml.ScalarNode) and name in seen:
                    return prefix + name, key_node.start_mark
                seen.add(name)
                stack.append((value_node, f"{prefix}{name}."))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, prefix) for item in node.value)
    return None


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` without aliases and without repeated keys (each raises `_Refused`)."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        repeated = _repeated_key(node)
        if repeated is not None:
            key, mark = repeated
            raise _Refused(f"holds the key {key[:120]} twice", mark, f"keep one '{key.rsplit('.', 1)[-1][:40]}:'; "
                           "YAML would silently keep the last")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (one level of sections)."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and "." not in dotted:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def read_yaml(path: Path, what: str = "config file", missing_fix: str = "pass an existing YAML file to --config") -> dict:
    """A YAML config file as flat dotted keys; every way it can be wrong is one `UsageError`."""
    try:
        tree = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} not found", str(path), missing_fix) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} unreadable ({err.__class__.__name__})", str(path),
                         "fix the file: it must be UTF-8 text" if isinstance(err, UnicodeDecodeError) else
                         "check that it is a readable file") from None
    except _Refused as err:
        at = f"{path}:{err.mark.line + 1}" if err.mark else str(path)
        raise UsageError(f"{what} {err.what}", at, err.fix) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = str(getattr(err, "problem", None) or "invalid YAML")[:120]
        raise UsageError(f"{what} is not valid YAML ({reason})", at, "write plain YAML: sections of key: value") from None
    except (RecursionError, ValueError, OverflowError) as err:  # deep nesting; a 5,000-digit integer
        problem = "nests too deeply" if isinstance(err, RecursionError) else "holds a value YAML cannot convert"
        raise UsageError(f"{what} {problem}", str(path), "write plain YAML: sections of key: value") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict) or not all(isinstance(k, str) for k in tree):
        raise UsageError(f"{what} must be a mapping of sections (it holds a {type(tree).__name__})", str(path),
                         "write e.g. 'train:\\n  epochs: 3'")
    return flatten(tree)
