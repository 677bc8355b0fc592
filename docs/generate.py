"""The generated parts of the pages in docs/, made from the code's own help text.

    python docs/generate.py          # rewrite every generated part from the code
    python docs/generate.py --check  # exit 1 naming each part that differs from the code (tests/test_docs.py)

A generated part lies between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``:
``config-keys`` (every trainer key: type, default, meaning, what a resume does with a change),
``launch-flags`` (every field of the cluster request: flag, profile key, default, meaning) and
``layout`` (each subpackage and top-level module with the first line of its docstring).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_origin

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def config_keys() -> str:
    from ae_dist.config.schema import leaf_fields
    from ae_dist.config.types import choices
    from ae_dist.run.resume import NOT_COMPARED, refused

    def on_resume(key: str) -> str:
        if key in NOT_COMPARED:
            return "not compared"
        grows, shrinks = refused({key: (1, 2)}), refused({key: (2, 1)})
        if not grows and not shrinks:
            return "may change"
        return "may grow; else `changed`" if not grows else "needs `train.resume=changed`"

    lines = ["| key | type | default | meaning | a change on resume |", "|---|---|---|---|---|"]
    for key, (kind, f) in leaf_fields().items():
        options = choices(kind)
        word = "choice" if options else "list" if get_origin(kind) is tuple else kind.__name__
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else repr(f.default)
        default = f"`{cell(default)}`" if default else ""
        listed = " | ".join(c or repr(c) for c in options)
        meaning = f.metadata["help"] + (f" ({listed})" if options else "")
        lines.append(f"| `{key}` | {word} | {default} | {cell(meaning)} | {on_resume(key)} |")
    return "\n".join(lines)


def launch_flags() -> str:
    from launch.request import FIELDS, flag_of

    lines = ["| flag | profile key | default | meaning |", "|---|---|---|---|"]
    for name, f in FIELDS.items():
        default = "" if f.default in (None, ()) else f"`{f.default}`"
        where = " (SSH: used on the laptop, not sent on)" if f.metadata["ssh"] else ""
        lines.append(f"| `{flag_of(f)}` | `{name}` | {default} | {cell(f.metadata['help'])}{where} |")
    return "\n".join(lines)


def first_line(path: Path) -> str:
    """The first sentence of the module's docstring, its lines joined."""
    text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


def layout() -> str:
    """One line per subpackage and top-level module of ae_dist, then launch, from their docstrings."""
    entries: list[tuple[str, str]] = []
    for package in ("ae_dist", "launch"):
        base = ROOT / package
        entries.append((f"{package}/", first_line(base / "__init__.py")))
        for path in sorted(base.iterdir()):
            if path.is_dir() and (path / "__init__.py").exists() and path.name != "configs":
                entries.append((f"  {path.name}/", first_line(path / "__init__.py")))
            elif package == "ae_dist" and path.suffix == ".py" and path.name not in ("__init__.py", "__main__.py"):
                entries.append((f"  {path.name}", first_line(path)))
    width = max(len(name) for name, _ in entries) + 2
    return "\n".join(["```", *(f"{name:<{width}}{line}".rstrip() for name, line in entries), "```"])


GENERATORS: dict[str, Callable[[], str]] = {"config-keys": config_keys, "launch-flags": launch_flags, "layout": layout}


def render(text: str, where: str = "") -> str:
    """``text`` with each generated part made anew; an unknown part's name is an error."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise SystemExit(f"error: unknown generated part {name!r} ({where}): use one of {', '.join(GENERATORS)}")
        return f"{match[1]}{GENERATORS[name]()}\n{match[4]}"

    return BLOCK.sub(fill, text)


def stale(pages: list[Path]) -> list[str]:
    """``page: part`` for each generated part that differs from what the code makes now."""
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        made = {m["name"]: m["body"] for m in BLOCK.finditer(render(text, str(page)))}
        found += [f"{page.relative_to(ROOT)}: {m['name']}" for m in BLOCK.finditer(text) if made[m["name"]] != m["body"]]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale generated part")
    args = parser.parse_args(argv)
    pages = sorted(DOCS.glob("*.md"))
    if args.check:
        found = stale(pages)
        for item in found:
            print(f"stale generated part: {item} (run: python docs/generate.py)", file=sys.stderr)
        return 1 if found else 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        new = render(text, str(page))
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"rewrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
