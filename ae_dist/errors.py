"""Every way a command ends badly, and the one place that turns it into lines and an exit status.

Each error carries what went wrong, where (a config key, a path, an address) and how to fix it,
printed as ``error: <what> (<where>): <fix>``, and its exit status: 2 for bad input (config,
paths, data, checkpoints, requests, a rendezvous that cannot form), 1 for failures at run time
(a diverged loss, a rank that stopped answering, a full disk). `reporting` is the one wrapper
that prints and maps them, used by ``python -m ae_dist.train`` and by each submitit task alike.

Who speaks: an error raised before the ranks joined (a bad config) is the same on every rank,
so rank 0 alone prints it; one raised after is this rank's own (`AeDistError.rank` is set by
`ae_dist.trainer.run`) and every failing rank prints its line, prefixed ``rank N:`` off rank 0.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; run the same command to continue
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT) after a checkpoint, as shells report 128 + SIGINT
# A write the OS refused, by its cause (the OS's own words name it: "Read-only file system", "Permission
# denied", ...): what fixes it. The run then continues with the same command.
OS_FIXES: dict[int, str] = {
    errno.EROFS: "remount it read-write, or continue in a copy of the run folder on a writable file system (run.dir=COPY)",
    errno.EACCES: "give this user permission there (ls -ld shows the owner), or continue in a copy of the run "
                  "folder that this user owns (run.dir=COPY)",
    errno.EPERM: "give this user permission there (ls -ld shows the owner), or continue in a copy of the run "
                 "folder that this user owns (run.dir=COPY)",
    errno.EDQUOT: "free space within your quota (quota -s shows it), or ask for a larger one",
    errno.ENOSPC: "free space on that file system (df -h shows how much is left)",
    errno.EIO: "check the disk or the network file system (dmesg) before continuing",
    errno.EFBIG: "use a file system that takes larger files",
}
DISK_ERRNOS = tuple(OS_FIXES)
QUOTE_LIMIT = 200  # characters of a user's value quoted in a message, at most


class AeDistError(Exception):
    """Base: one or more ``(what, where, fix)`` problems, one exit status."""

    exit_code = EXIT_FAILED
    names_its_rank = False  # the message itself says which rank gave up: no ``rank N:`` prefix

    def __init__(self, what: str, where: str, fix: str, *, more: list[tuple[str, str, str]] | None = None):
        self.problems = [(what, where, fix), *(more or [])]
        self.rank: int | None = None  # the rank that raised it, once the ranks have joined
        self.all_ranks_alike = False  # every rank raises it alike (a shared decision): rank 0 alone says it
        super().__init__(self.lines()[0])

    @classmethod
    def many(cls, problems: list[tuple[str, str, str]]) -> AeDistError:
        first, *rest = problems
        return cls(*first, more=rest)

    def lines(self) -> list[str]:
        return [printable(f"error: {what} ({where}): {fix}") for what, where, fix in self.problems]


class UsageError(AeDistError):
    """A problem with what the user asked for: config, paths, data, checkpoints, requests."""

    exit_code = EXIT_USAGE


class RendezvousFailed(UsageError):
    """This rank could not join the others (a wrong address, a port another program holds)."""


class CheckpointFailed(AeDistError):
    """A checkpoint could not be written (a full disk); the previous one is intact."""


class DiskFull(AeDistError):
    """The run folder could not be written (a full disk, a quota, a read-only file system, permission denied)."""


class Diverged(AeDistError):
    """The loss went NaN/Inf under train.nan_policy=stop."""

    def __init__(self, step: int, where: str = "train.nan_policy=stop", fix: str = ""):
        super().__init__(f"loss is NaN or Inf at step {step}", where, fix or "lower optim.lr or use train.nan_policy=skip; "
                         "the newest checkpoint is the last good state")
        self.step = step


class PeerLost(AeDistError):
    """A collective failed because a rank stopped answering; the message names the silent rank and this one."""

    names_its_rank = True


def printable(line: str, limit: int | None = None) -> str:
    """One line whatever the input held: control characters escaped, optionally cut at ``limit``."""
    if limit is not None and len(line) > limit:
        line = line[:limit] + f"... ({len(line) - limit} more characters)"
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in line)


def quote(value: object) -> str:
    """A user's value as a message shows it: repr, one line, at most QUOTE_LIMIT characters."""
    text = repr(value) if len(str(value)) <= QUOTE_LIMIT * 4 else repr(str(value)[:QUOTE_LIMIT * 4])
    return printable(text, QUOTE_LIMIT)


def os_fix(err: OSError, intact: str = "the newest checkpoint is intact") -> str:
    """The fix for a write the OS refused with ``err``, then ``intact`` and how to continue."""
    return f"{OS_FIXES.get(err.errno or 0, 'fix what the OS reports')}; {intact}: then run the same command to resume"


def as_error(err: BaseException, where: str) -> AeDistError | None:
    """The project error an exception stands for, or None: a write the OS refused (a read-only file system,
    permission denied, a quota, a full disk, ...) becomes `DiskFull`, naming the OS's cause and its fix."""
    if isinstance(err, AeDistError):
        return err
    if isinstance(err, OSError) and err.errno in OS_FIXES:
        return DiskFull(f"cannot write {err.filename or where}: {err.strerror}", "run.dir", os_fix(err))
    return None


def say(err: AeDistError, env: dict[str, str] | None = None) -> int:
    """Print ``err`` as its rank should (see the module docstring); return its exit status."""
    env = os.environ if env is None else env
    if err.rank is None:
        if env.get("RANK", env.get("SLURM_PROCID", "0")) == "0":
            for line in err.lines():
                print(line, file=sys.stderr, flush=True)
    else:
        prefix = f"rank {err.rank}: " if err.rank and not err.names_its_rank else ""
        for line in err.lines():
            print(prefix + line, file=sys.stderr, flush=True)
    return err.exit_code


def reporting(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command so each project error becomes its lines and its exit status, never a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (AeDistError, OSError) as err:
            known = as_error(err, "run.dir")
            if known is None:
                raise
            return say(known)

    return wrapper
