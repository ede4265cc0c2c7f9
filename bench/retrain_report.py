"""What bench/retrain_bench.py prints of its runs: a line per run, the cell table, and
issue 22's acceptance checked on them (`--report` prints the last two of a saved run)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any


def line(r: dict[str, Any]) -> str:
    job = r["job"]
    gate = job.get("gate") or {}
    old = (gate.get("old") or {}).get("difference")
    noise = (gate.get("labels") or {}).get("flagged_share")
    kind = "wrong" if r["wrong"] else "labels"
    delta = f"topic {r['topic_delta']:+.4f} rest {r['rest_delta']:+.4f}" if r["after"] else "-"
    served = f"{r['served_s']:.0f}" if r["served_s"] is not None else "-"
    return (
        f"{r['topic']} N={r['n']} seed={r['seed']} {r['mode']} {kind}{r['variant'] or ''}: "
        f"{job['state']} in {r['job_s']:.0f} s (served {served} s); candidate {delta}; gate old "
        f"{old if old is None else f'{old:+.4f}'} flagged {noise}; "
        f"{'FALSE REJECTION' if r['false_rejection'] else ''}"
        f"{'FALSE PROMOTION' if r['false_promotion'] else ''}"
    )


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def grouped(
    runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]]
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    return groups


def cells(runs: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per topic, N, mode and batch kind, medians over seeds."""
    groups = grouped(runs, lambda r: (r["topic"], r["n"], r["mode"], r["wrong"],
                                      json.dumps(r["variant"])))  # fmt: skip
    out = [
        "| topic | N | mode | labels | promoted | s to served (median) | topic Δ | rest Δ "
        "| gate old Δ | flagged / reference | false rej. | false prom. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (topic, n, mode, wrong, variant), rs in groups.items():
        promoted = sum(r["job"]["state"] == "succeeded" for r in rs)
        served = _median([r["served_s"] for r in rs if r["served_s"] is not None])
        med = {k: _median([r[k] for r in rs if k in r]) for k in ("topic_delta", "rest_delta")}
        gates = [(r["job"].get("gate") or {}) for r in rs]
        old = _median([g["old"]["difference"] for g in gates if "difference" in g.get("old", {})])
        flagged = _median([g["labels"]["flagged_share"] for g in gates if "labels" in g])
        ref = _median([g["labels"]["reference_flagged_share"] for g in gates if "labels" in g])
        fmt = lambda v, f="+.4f": "-" if v is None else format(v, f)  # noqa: E731
        out.append(
            f"| {topic} | {n} | {mode}{'' if variant == '{}' else ' ' + variant} "
            f"| {'wrong' if wrong else 'right'} | {promoted}/{len(rs)} | {fmt(served, '.0f')} "
            f"| {fmt(med['topic_delta'])} | {fmt(med['rest_delta'])} | {fmt(old)} "
            f"| {fmt(flagged, '.2f')} / {fmt(ref, '.2f')} "
            f"| {sum(r['false_rejection'] for r in rs)} | {sum(r['false_promotion'] for r in rs)} |"
        )
    return "\n".join(out)


def acceptance(runs: list[dict[str, Any]]) -> str:
    """Issue 22's acceptance, checked on the runs: rates, forgetting, share of the refit's gain."""
    right = [r for r in runs if not r["wrong"]]
    wrong = [r for r in runs if r["wrong"]]
    groups = grouped(right, lambda r: (r["topic"], r["n"], r["mode"]))
    med = lambda rs, k: _median([r[k] for r in rs if k in r])  # noqa: E731
    rejected_cells = sum(any(r["false_rejection"] for r in rs) for rs in groups.values())
    lines = [
        f"false promotions: {sum(r['false_promotion'] for r in wrong)} of {len(wrong)} "
        f"wrong-label runs",
        f"false rejections: {sum(r['false_rejection'] for r in right)} of {len(right)} runs, "
        f"in {rejected_cells} of {len(groups)} cells",
    ]
    for (topic, n, mode), rs in groups.items():
        if mode != "incremental":
            continue
        rest, topic_gain = med(rs, "rest_delta"), med(rs, "topic_delta")
        refit = med(groups.get((topic, n, "refit"), []), "topic_delta")
        share = (
            "-" if not refit or refit <= 0 or topic_gain is None else f"{topic_gain / refit:.0%}"
        )
        served = [r["served_s"] for r in rs if r["served_s"] is not None]
        lines.append(
            f"{topic} N={n} incremental: rest {rest if rest is None else f'{rest:+.4f}'} (median), "
            f"topic gain {share} of the refit's, served in {served} s"
        )
    return "\n".join(lines)
