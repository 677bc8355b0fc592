"""Work cut into fixed chunks of rows, whose boundaries do not depend on the number of ranks.

Chunk ``i`` is rows ``i * rows .. (i + 1) * rows`` of the split, whatever the world size, and
it is computed in the same batches wherever it runs, so 1 rank and 4 write the same bytes.
A chunk whose rows are written and synced is recorded as a file ``.chunks/<i>``; a job that
is killed, stopped or requeued does the unrecorded chunks again, at any world size, and ends
with the same files as an uninterrupted run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FOLDER = ".chunks"


@dataclass(frozen=True)
class Chunks:
    count: int  # rows in all
    rows: int  # rows per chunk (the last may hold fewer)

    def __len__(self) -> int:
        return -(-self.count // self.rows)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.rows, min(self.count, (i + 1) * self.rows)


class Record:
    """Which chunks of an output folder are complete."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / FOLDER

    def done(self) -> set[int]:
        if not self.folder.is_dir():
            return set()
        return {int(p.name) for p in self.folder.iterdir() if p.name.isdigit()}

    def pending(self, chunks: Chunks) -> list[int]:
        done = self.done()
        return [i for i in range(len(chunks)) if i not in done]

    def mark(self, i: int) -> None:
        self.folder.mkdir(exist_ok=True)
        tmp = self.folder / f".{i}.tmp-{os.getpid()}"
        tmp.write_bytes(b"")
        os.replace(tmp, self.folder / str(i))

    def clear(self) -> None:
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                p.unlink(missing_ok=True)
            self.folder.rmdir()


def assign(pending: list[int], rank: int, world_size: int) -> list[int | None]:
    """This rank's chunks, one per round (None: nothing this round); every rank gets the same number of rounds."""
    rounds = -(-len(pending) // world_size)
    return [pending[r * world_size + rank] if r * world_size + rank < len(pending) else None for r in range(rounds)]
