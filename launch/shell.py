"""Values that reach a shell, a batch script, an SSH command line or a file name: refused or quoted.

Where each value of a launch goes, and what keeps it inert (both launchers, and slurm/train.sbatch):

- run.dir -> submitit's folder `<run.dir>/submitit`, written by submitit into `#SBATCH --output='...'`
  (shlex-quoted, but sbatch reads a `#SBATCH` line only up to its newline and drops backslashes
  even inside quotes) and `srun --output ...`, where SLURM and submitit expand `%j`-style patterns:
  control characters, `\\` and `%` are refused (`check_folder`).
- job name, partition, account, qos, constraint, `--sbatch` values -> `#SBATCH --key='value'` lines
  (submitit quotes the value, not the key): control characters and `\\` are refused; `--sbatch`
  keys must be long option names (`SBATCH_KEY`).
- setup and remote setup lines -> lines of the batch script and of the login shell, run as
  written: they are shell on purpose (the one place a user writes shell); control characters
  other than tab are refused (a CR from a Windows editor, an ESC, a NUL).
- host -> ssh's destination argument: a leading `-` (ssh would read an option), whitespace and
  control characters are refused.
- remote dir, ssh config file, time, sweep items -> arguments, shlex-quoted in the SSH command line;
  control characters are refused. Sweep values also name folders: characters outside
  `[A-Za-z0-9._+-]` become `_` there, and points that collide are refused (`launch.submit`).
- slurm/train.sbatch passes its arguments on as `"$@"`: whatever they hold reaches the trainer
  verbatim and is never read by a shell.
- every command the launcher prints for pasting is built with `command_line` (shlex).
"""

from __future__ import annotations

import re
import shlex
import unicodedata

from ae_dist.errors import UsageError

SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]+")  # a long sbatch option name, as submitit writes it: --KEY=VALUE
BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # text that reads other than it runs


def control_character(text: str, allowed: str = "") -> str | None:
    """The first character that no name or path should hold (control, separator, bidi, surrogate), or None."""
    for char in text:
        if char in allowed:
            continue
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in BIDI_CONTROLS:
            return char
    return None


def _refuse(char: str, text: str, where: str, kind: str) -> UsageError:
    position = text.index(char)
    return UsageError(f"{kind} holds the control character {char!r} at position {position}", where,
                      "remove it: names and paths that reach a shell, a batch script or a file name are plain text")


def check_name(text: str, where: str) -> None:
    """A name or path that is quoted wherever it goes: only control characters are refused."""
    char = control_character(text)
    if char is not None:
        raise _refuse(char, text, where, "the value")


def check_sbatch_value(text: str, where: str) -> None:
    """A value submitit writes as `#SBATCH --key='value'`: sbatch's own parser must read back the same text."""
    check_name(text, where)
    if "\\" in text:
        raise UsageError("the value holds a backslash, which sbatch drops from #SBATCH lines", where,
                         "write the value without '\\'")


def check_folder(path: str, where: str) -> None:
    """run.dir as the launcher uses it: also the submitit folder, so no `%` (file-name patterns) and no `\\`."""
    check_sbatch_value(path, where)
    if "%" in path:
        raise UsageError("the folder holds '%', which SLURM and submitit read as a file-name pattern (%j, %t)", where,
                         "name the folder without '%'")


def check_lines(lines: tuple[str, ...], where: str) -> None:
    """Setup lines are shell, run as written; a control character in them is a mistake, not a command."""
    for line in lines:
        char = control_character(line, allowed="\t")
        if char is not None:
            raise _refuse(char, line, where, "a setup line")


def check_host(host: str, where: str) -> None:
    check_name(host, where)
    if not host or host.startswith("-") or any(char.isspace() for char in host):
        raise UsageError(f"not a host name: {shlex.quote(host)}", where,
                         "give a host from your ssh config or user@host (no spaces, no leading '-')")


def check_sbatch_key(key: str, where: str) -> None:
    if not SBATCH_KEY.fullmatch(key):
        raise UsageError(f"not an sbatch option name: {shlex.quote(key)[:80]}", where,
                         "give a long option name as sbatch --help lists it, e.g. gres=gpu:4 or exclude=node7")


def command_line(argv: list[str]) -> str:
    """A command to print for pasting, on one line: each argument shell-quoted; one holding a newline (setup
    lines) as bash's $'...' with the newline escaped."""
    return " ".join(shlex.quote(arg) if arg.isprintable() else _ansi_c(arg) for arg in argv)


def _ansi_c(text: str) -> str:
    escaped = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "$'" + "".join(escaped.get(char) or (char if char.isprintable() else f"\\u{ord(char):04x}")
                          for char in text) + "'"
