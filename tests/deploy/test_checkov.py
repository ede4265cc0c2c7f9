"""checkov over the rendered overlays, the Secret and Namespace files and the Dockerfile.

Every finding fails; a check may only be skipped in the file it concerns, with
its reason beside it (a `checkov.io/skipN` annotation, or `# checkov:skip=`).
checkov is installed in its own virtualenv (.venv/tools): its pins conflict
with the project's (packaging, networkx, python-dateutil).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import EXTRAS, K8S, OVERLAYS, ROOT, WITH_COMPONENT, Manifest, find_tool


def test_checkov_finds_nothing_unjustified(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    checkov = find_tool("checkov", "run `make deploy-tools` (installs it into .venv/tools)")
    files = []
    for target in OVERLAYS + EXTRAS + tuple(WITH_COMPONENT):
        path = tmp_path / f"{target}.yaml"
        path.write_text(yaml.safe_dump_all(rendered[target], sort_keys=False))
        files.append(path)
    files += [K8S / "secret.example.yaml", K8S / "namespace.yaml", ROOT / "Dockerfile"]
    env = {
        **os.environ,
        # checkov forks one worker per framework by default; a crash in a
        # forked worker has been seen to hang the run instead of failing it.
        "CHECKOV_PARALLELIZATION_TYPE": "none",
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [
            checkov,
            *(arg for f in files for arg in ("-f", str(f))),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "--output",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.strip(), f"checkov printed no report:\n{result.stderr[-3000:]}"
    data = json.loads(result.stdout)
    reports: list[dict[str, Any]] = data if isinstance(data, list) else [data]
    by_type = {r["check_type"]: r for r in reports}
    assert {"kubernetes", "dockerfile"} <= set(by_type), f"missing reports: {set(by_type)}"
    assert by_type["kubernetes"]["summary"]["resource_count"] >= 20
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        failed = report["results"].get("failed_checks", [])
        assert not failed, "\n".join(
            f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed
        )
        for skipped in report["results"].get("skipped_checks", []):
            reason = skipped.get("check_result", {}).get("suppress_comment", "")
            assert reason and reason != "No comment provided", (
                f"{skipped['check_id']} skipped on {skipped['resource']} without a reason"
            )
    assert result.returncode == 0, result.stderr[-3000:]
