"""`python -m retrain run --job-id ID | bootstrap`: the code that joins training and the store.

`run` executes one queued retrain job (the service launches it as a child
process or a Kubernetes Job); `bootstrap` is the first run of `make serve`.
Settings come from the environment (`core.settings.RetrainSettings`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("retrain")


def run(job_id: str) -> int:
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
    sys.stdout.write(state + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("run", help="run one queued retrain job (DATABASE_URL, BENTOML_HOME)")
    job.add_argument("--job-id", required=True)
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
        return run(args.job_id)
    from retrain.bootstrap import main as bootstrap

    return bootstrap(rest)


if __name__ == "__main__":
    sys.exit(main())
