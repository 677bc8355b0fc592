"""Bad input ends as one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for: config, paths, data, checkpoints, requests.

    `problems` holds one ``(what, where, fix)`` triple per problem; each becomes one line
    ``error: <what> (<where>): <fix>``.
    """

    def __init__(self, what: str, where: str, fix: str, *, more: list[tuple[str, str, str]] | None = None):
        self.problems = [(what, where, fix), *(more or [])]
        super().__init__(self.lines()[0])

    @classmethod
    def many(cls, problems: list[tuple[str, str, str]]) -> UsageError:
        first, *rest = problems
        return cls(*first, more=rest)

    def lines(self) -> list[str]:
        return [_printable(f"error: {what} ({where}): {fix}") for what, where, fix in self.problems]


def _printable(line: str) -> str:
    """One line whatever the input held: newlines and other control characters are escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in line)


def exits_on_usage_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main`` so a UsageError prints its lines and returns 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            # every rank sees the same problem; one says it
            if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":
                for line in err.lines():
                    print(line, file=sys.stderr, flush=True)
            return EXIT_USAGE

    return wrapper
