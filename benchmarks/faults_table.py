"""The fault table of docs/faults.md: run the fault-injection suite and print what each fault did.

    python benchmarks/faults_table.py                    # runs the suite (about 5 minutes on 2 cores), prints the table
    python benchmarks/faults_table.py --rows rows.jsonl  # prints the table of rows a run left

It runs ``pytest tests/test_faults.py tests/test_fuzz_config.py tests/test_bad_files.py`` with AE_DIST_FAULT_REPORT
set to a file; each test appends one JSON row (fault, how it was injected, outcome, work
lost, data lost) measured in that run. The disk-full tests mount a tmpfs, so run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = ["tests/test_faults.py", "tests/test_fuzz_config.py", "tests/test_bad_files.py"]
COLUMNS = (("fault", "Fault"), ("injected", "How it was injected"), ("outcome", "Outcome"),
           ("work_lost", "Work lost (steps recomputed)"), ("data_lost", "Data lost"))


def run_suite(rows: Path) -> int:
    env = dict(os.environ, AE_DIST_FAULT_REPORT=str(rows))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE]
    print("$ " + " ".join(command[2:]), file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=REPO, env=env).returncode


def table(rows: list[dict[str, str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, help="print the table of this rows file instead of running the suite")
    args = parser.parse_args(argv)
    status = 0
    if args.rows is None:
        with tempfile.TemporaryDirectory() as tmp:
            rows_path = Path(tmp) / "rows.jsonl"
            rows_path.touch()
            status = run_suite(rows_path)
            text = rows_path.read_text(encoding="utf-8")
    else:
        text = args.rows.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    print(table(rows))
    print(f"\nRegenerate: python benchmarks/faults_table.py (the suite: pytest {' '.join(SUITE)})")
    if status:
        print(f"pytest failed (exit {status}): the table lacks the failed tests' rows", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
