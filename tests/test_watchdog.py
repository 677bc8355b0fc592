"""A rank blocked where no collective raises (NCCL's case: a CUDA sync, a stuck kernel; here a sleep) is found
by the heartbeat threads, independent of the main threads: every rank ends with one line, incidents/ holds
every rank's stacks and the verdict. Real processes, gloo."""

from __future__ import annotations

import time
from pathlib import Path

from ae_dist.dist.incidents import records
from tests.helpers.commands import TINY, hook_env, wait_for
from tests.helpers.faults import one_clear_line
from tests.helpers.processes import Job

EVERY_STEP = ["train.log_every=1", "checkpoint.every_steps=5"]


def test_a_rank_asleep_outside_any_collective_is_named_by_the_heartbeat_threads_of_both_ranks(tmp_path: Path) -> None:
    timeout_s = 6
    run_dir = tmp_path / "run"
    env = hook_env(tmp_path, "hang_rank", HANG_RANK="1", HANG_AFTER_STEPS="12")
    job = Job.start([*TINY, f"run.dir={run_dir}", *EVERY_STEP, f"dist.timeout_s={timeout_s}"], tmp_path, nproc=2,
                    srun_like=True, env=env)
    wait_for(lambda: "hanging after step 12" in job.stderr(1) or job.check_running(), 240, "rank 1 to hang")
    started = time.monotonic()
    codes = job.wait(120)
    waited = time.monotonic() - started
    assert codes == [1, 1], (codes, job.output(0)[-2000:], job.output(1)[-2000:])
    for rank in (0, 1):
        line = one_clear_line(job.stderr(rank))
        # rank 1 (the hung one) may find rank 0 already gone with its store (a busy machine): then it names that
        named_self = line.startswith("error: rank 1 on ") and "stalled: its heartbeat answers but its main thread" in line
        assert named_self or (rank == 1 and line.startswith("error: rank 0 at ") and "stopped answering" in line), line
        assert f"rank {rank} on " in line and "no step finished for" in line and "seen by its heartbeat thread" in line
        assert f"(dist.timeout_s={timeout_s})" in line, line
    assert waited < timeout_s + 40, waited  # well before the process group's own timeout would add its grace
    [incident] = records(run_dir / "incidents", "silent")
    assert [(s["rank"], s["kind"]) for s in incident["silent"]] == [(1, "stalled")], incident
    stacks = sorted(p.name for p in (run_dir / "incidents").glob(f"{incident['stamp']}-rank*.txt"))
    assert [name.split("-")[2] for name in stacks] == ["rank0", "rank1"], stacks
    assert "hang_rank.py" in (run_dir / "incidents" / stacks[1]).read_text()  # where rank 1's main thread sleeps
