"""Which workers of a server ran the model lately, so idle cores can be put to work.

A lone text runs faster on every core than on a worker's one thread, but only
while the other workers are quiet: under load, lone texts keep arriving, and
workers that each run several threads on the same cores stall each other.
Checking that no other worker is running *now* was not enough (bench/SERVING.md,
2026-12-01: 146-151 vs 255-280 texts/s at 8 clients), because at 8 clients a
worker is idle for a few milliseconds between batches. So each worker writes,
in a small file shared by the server's workers, when its last run ended (or
that it is running), and a lone text goes wide only when no other worker has
run for `QUIET_S`.

The file is keyed by the parent process (BentoML's arbiter, the same for all
workers of one server), in the temporary directory: one per server, nothing
to configure, removed when the workers shut down. A worker killed mid-run
leaves its slot "running" until its replacement (same slot) starts; meanwhile
the others stay narrow, which is only the default speed.

A local retrain reads the same file (an observer, `Activity(None, path)`): while
every worker is quiet, its evaluation runs on every core (`wide_when_quiet`).
Each slot also holds how many connections the worker is serving, for
`service.balance` to even them out.
"""

from __future__ import annotations

import functools
import logging
import math
import mmap
import os
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.runtime import Wide

log = logging.getLogger(__name__)

SLOTS = 256  # workers a server may have; more than any core count it runs on
# Per worker, in time.monotonic() seconds: when its last run ended (inf while running);
# how many client connections it serves, and when it counted them.
SLOT = struct.Struct("ddd")
ENDED, CONNECTIONS, COUNTED_AT = (i * struct.calcsize("d") for i in range(3))
QUIET_S = 0.05  # no other worker ran for this long: the other cores are free
# A retrain's evaluation waits for a longer quiet: a gap between batches under load (the
# load's clients starved of CPU for a moment) must not send it wide.
BURST_QUIET_S = 1.0


def shared_path() -> Path:
    return Path(tempfile.gettempdir()) / f"selftune-activity-{os.getppid()}"


class Activity:
    """This worker's `slot` in the server's activity file, and a look at the others'.

    With `slot` None it only looks (a retrain process): the file must exist, and
    `quiet` then means that no worker ran lately.
    """

    def __init__(self, slot: int | None, path: Path | None = None) -> None:
        if slot is not None and not 0 <= slot < SLOTS:
            raise ValueError(f"worker slot {slot} is outside 0..{SLOTS - 1}")
        size = SLOTS * SLOT.size
        self.path = path or shared_path()
        if slot is None:
            with self.path.open("rb") as f:
                self._slots = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                self._slots = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self._slot = slot
        self._running = 0  # this worker's batches in flight (BentoML may overlap them)
        self._lock = threading.Lock()
        if slot is not None:
            self._write(ENDED, 0.0)

    def _write(self, field: int, *values: float) -> None:
        assert self._slot is not None, "an observer writes nothing"
        struct.pack_into(f"{len(values)}d", self._slots, self._slot * SLOT.size + field, *values)

    def quiet(self, seconds: float = QUIET_S) -> bool:
        """True when this worker runs nothing and no other one ran in the last `seconds`."""
        if self._running:
            return False
        since = time.monotonic() - seconds
        slots = SLOT.iter_unpack(self._slots)
        return all(end <= since for k, (end, _, _) in enumerate(slots) if k != self._slot)

    def count_connections(self, connections: int) -> None:
        """Publish how many connections this worker serves now."""
        self._write(CONNECTIONS, connections, time.monotonic())

    def others_connections(self, workers: int, max_age_s: float) -> list[int]:
        """The connections of the server's other workers (slots below `workers`); 0 for one
        that counted none in `max_age_s`: a worker no request reaches serves none."""
        since, slots = time.monotonic() - max_age_s, min(workers, SLOTS)
        fields = struct.unpack_from(SLOT.format * slots, self._slots)  # per request: those only
        counts = zip(fields[1::3], fields[2::3], strict=True)
        return [int(n) if at >= since else 0 for k, (n, at) in enumerate(counts) if k != self._slot]

    def close(self) -> None:
        """At shutdown: remove the file (workers that still run keep their mapping)."""
        self.path.unlink(missing_ok=True)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Mark this worker running for the duration of the block."""
        with self._lock:
            self._running += 1
            self._write(ENDED, math.inf)
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._write(ENDED, time.monotonic())


def wide_when_quiet(path: Path | None, threads: int) -> Wide | None:
    """Every core (not spinning) for each model run that starts once the server whose
    activity file is `path` has been quiet for BURST_QUIET_S; None without a file to read
    or a core to add."""
    cores = os.cpu_count() or 1
    if path is None or cores <= threads:
        return None
    try:
        quiet = functools.partial(Activity(None, path).quiet, BURST_QUIET_S)
        return Wide(cores, spin=False, quiet=quiet)
    except (OSError, ValueError) as exc:  # the server is gone, or the file is short
        log.warning("evaluation stays on %d thread(s): cannot read %s: %s", threads, path, exc)
        return None
