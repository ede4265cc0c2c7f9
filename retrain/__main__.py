"""`python -m retrain run | bootstrap`: the code that joins training and the store.

`run` executes one queued retrain job (the job runner launches it as a child
process or a Kubernetes Job); `bootstrap` is the first run of `make serve`.
Settings come from the environment (`core.settings.RetrainSettings`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("retrain")
OOM_SCORE_ADJ = 1000  # the kernel's maximum: chosen first under memory pressure
ORPHANED = 3  # exit code of a job whose launching worker died
PARENT_CHECK_S = 1.0


def run(job_id: str, parent: int | None = None) -> int:
    """Run one job; with `parent`, exit as soon as that process (our parent) is gone."""
    from core.periodic import Periodic

    # Watching from the start: the imports below take seconds.
    orphaned = Periodic("parent-watch", PARENT_CHECK_S, _exit_if_orphaned(parent))
    if parent is not None:
        orphaned.start()
    from core.settings import RetrainSettings
    from retrain.job import run_job
    from store import jobs, open_store
    from store.jobs import JobState

    settings = RetrainSettings()
    store = open_store(settings.resolved_database_url)
    try:
        state = run_job(job_id, store, settings)
    except Exception as exc:
        # Record why before dying, so GET /jobs/{id} says it rather than "process exited".
        with store.transaction() as tx:
            jobs.finish(tx, job_id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        orphaned.stop()
    sys.stdout.write(state + "\n")
    return 0


def _exit_if_orphaned(parent: int | None) -> Callable[[], None]:
    """A check that ends this process once `parent` is no longer its parent (it died).

    A local job's runner is the only one that may kill it (cancel, time limit), so
    a job whose serving worker died would otherwise train on unwatched, holding
    the one running slot. Exiting stops its heartbeats: within JOB_STALE_SECONDS
    any runner fails it. The worker names itself (`--exit-with`): a parent read
    here could already be the one the job was handed to after the worker died.
    """

    def check() -> None:
        if os.getppid() != parent:
            log.warning("the process that started this job (pid %d) is gone: exiting", parent)
            os._exit(ORPHANED)

    return check


def _volunteer_for_oom_kill() -> None:
    """Be the process the kernel's OOM killer picks first, before the server.

    A local retrain shares the serving container's memory limit (the single
    overlay); raising one's own oom_score_adj needs no privilege. Where the
    runtime kills a whole container on OOM (cgroup v2 memory.oom.group), the
    limit sized from measured use is what protects serving (docs/DESIGN.md #13).
    """
    try:
        Path("/proc/self/oom_score_adj").write_text(f"{OOM_SCORE_ADJ}\n")
    except OSError as exc:
        log.warning("oom_score_adj not raised (%s): an OOM may pick the server first", exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("run", help="run one queued retrain job (DATABASE_URL, BENTOML_HOME)")
    job.add_argument("--job-id", required=True)
    job.add_argument("--exit-with", type=int, metavar="PID",
                     help="exit once PID, the process that launched this job, is gone")  # fmt: skip
    sub.add_parser("bootstrap", help="first run: a quick model now, the full one queued")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for ours in ("retrain", "training", "core", "store"):
        logging.getLogger(ours).setLevel(logging.INFO)
    if args.command == "run":
        _volunteer_for_oom_kill()
        return run(args.job_id, args.exit_with)
    from retrain.bootstrap import main as bootstrap

    return bootstrap(rest)


if __name__ == "__main__":
    sys.exit(main())
