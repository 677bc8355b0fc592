"""A stand-in `sbatch` (with `srun` and `sinfo`) that keeps the batch script submitit writes and runs it.

`install(folder, partitions)` writes the three commands into ``folder/bin``; put that folder first
on PATH. The fake `sbatch` copies each script to ``folder/scripts/N.sh``, runs it with bash (the
fake `srun` does nothing), so any text that escaped its quoting runs as a command, then answers
as sbatch does: `Submitted batch job 4200+N`. `sbatch_value(line)` reads a `#SBATCH --key=value`
line back as sbatch itself does (SLURM's `_get_argument`: quotes, backslash escapes even inside
quotes, an unquoted `#` ends the line).
"""

from __future__ import annotations

import os
from pathlib import Path

SBATCH = """#!/bin/bash
n=$(ls "{scripts}" | grep -c '\\.sh$')
cp "$1" "{scripts}/$n.sh"
bash "$1" > "{scripts}/$n.out" 2>&1
echo "Submitted batch job $((4200 + n))"
"""


def install(folder: Path, partitions: tuple[str, ...] = ("debug",)) -> Path:
    """The bin folder holding sbatch, srun and sinfo; scripts land in ``folder/scripts``."""
    bin_dir, scripts = folder / "bin", folder / "scripts"
    bin_dir.mkdir(parents=True)
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH.format(scripts=scripts))
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")
    listing = "".join(f"{name}\n" for name in partitions)
    (folder / "partitions").write_text(listing)
    (bin_dir / "sinfo").write_text(f"#!/bin/bash\ncat {folder / 'partitions'}\n")
    for name in ("sbatch", "srun", "sinfo"):
        os.chmod(bin_dir / name, 0o755)
    return bin_dir


def scripts(folder: Path) -> list[Path]:
    return sorted((folder / "scripts").glob("*.sh"), key=lambda p: int(p.stem))


def sbatch_options(script: str) -> dict[str, str | bool]:
    """Every `#SBATCH --key[=value]` line of a batch script, each value as sbatch reads it."""
    options: dict[str, str | bool] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            argument = sbatch_value(line[len("#SBATCH "):])
            key, sep, value = argument.partition("=")
            options[key[2:]] = value if sep else True
    return options


def sbatch_value(text: str) -> str:
    """One `#SBATCH` argument as SLURM 22.05's sbatch parses it (src/sbatch/opt.c, _get_argument)."""
    out, quote, escaped = [], "", False
    for char in text.lstrip():
        if char == "\n":
            break
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif quote:
            if char == quote:
                quote = ""
                continue
        elif char in "\"'":
            quote = char
            continue
        elif char == "#" or char.isspace():
            break
        out.append(char)
    return "".join(out)
