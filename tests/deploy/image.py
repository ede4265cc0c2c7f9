"""Build and run the project's images without a Docker engine: Debian's buildah, as root.

The base image cannot come from a registry here, so it is made locally:
`debootstrap` (Debian 12 minbase with python3, python3-venv and python3-pip;
its Python is 3.11, as in python:3.11-slim-bookworm) and `buildah commit`. It is
named after a hash of its recipe, so it is made once per recipe and machine and
reused by every later run. The project's Dockerfile then builds on it through
its one build argument, PYTHON_BASE, with buildah's layer cache: a run after a
code change rebuilds only the small layers of our own packages.

Everything lives in a buildah store of its own (STORE), which survives between
runs; one run at a time uses it (a file lock), and each run removes the images
the previous one made and this one no longer uses.

The root filesystem driver is overlayfs (STORAGE_DRIVER=vfs where the kernel
offers none: it copies every layer in full, about three times slower here).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORE = Path("/var/lib/containers/selftune-test")
RUN_ROOT = Path("/run/containers/selftune-test")
BASE_NAME = "localhost/selftune-test-base"
IMAGE_NAME = "localhost/selftune-test"
# What the base image is made of; its hash names the image, so any change here
# makes a new base (and the old one is removed).
BASE_RECIPE: dict[str, Any] = {
    "suite": "bookworm",
    "variant": "minbase",
    "mirror": "http://deb.debian.org/debian",
    # python-is-python3: the Dockerfile says `python`, as python:3.11-slim does.
    "include": ["python3", "python3-venv", "python3-pip", "python-is-python3"],
    "env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    "cleanup": ["var/cache/apt/archives", "var/lib/apt/lists"],
}
# The host's CA bundle, mounted over the image's while it builds: pip in a RUN
# step then trusts what this machine's pip trusts (a TLS-inspecting proxy's CA).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 1800


def missing_tools() -> str | None:
    """Why the image tests cannot run here, or None when they can."""
    absent = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if absent:
        return f"{' and '.join(absent)} not installed (`make image-tools` installs them as root)"
    if os.geteuid() != 0:
        return "buildah's chroot isolation and debootstrap need root"
    return None


class Buildah:
    """buildah on the test store, with chroot isolation and the host's network."""

    def __init__(self, driver: str) -> None:
        self.prefix = [
            "buildah",
            "--root",
            str(STORE / "storage"),
            "--runroot",
            str(RUN_ROOT),
            "--storage-driver",
            driver,
        ]
        self.used: set[str] = set()  # image IDs this run built or took from the cache
        self.built: set[str] = set()  # targets built
        self.base = ""  # the base image, once made or found

    def __call__(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result.stdout.strip()

    def run_args(self) -> list[str]:
        return [*self.prefix, "run", "--isolation", "chroot", "--network", "host"]

    def exists(self, image: str) -> bool:
        return (
            subprocess.run(
                [*self.prefix, "inspect", "--type", "image", image], capture_output=True
            ).returncode
            == 0
        )

    def config(self, image: str) -> dict[str, Any]:
        """The image's Docker-format configuration (User, Entrypoint, Healthcheck...)."""
        config: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))["Docker"][
            "config"
        ]
        return config

    def build(self, context: Path, target: str, args: dict[str, str], volumes: list[str]) -> str:
        """`buildah build --layers` of one Dockerfile target; returns its tag. Fails loudly."""
        tag = self.tag(target)
        command = [
            *self.prefix,
            "build",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--layers",
            "--format",
            "docker",  # keeps HEALTHCHECK, which the OCI format has no field for
            "--target",
            target,
            "--tag",
            tag,
        ]
        for name, value in args.items():
            command += ["--build-arg", f"{name}={value}"]
        for volume in volumes:
            command += ["--volume", volume]
        result = subprocess.run(
            [*command, str(context)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        if result.returncode != 0:
            output = result.stdout[-6000:] + result.stderr[-4000:]
            raise AssertionError(f"buildah build --target {target} failed:\n{output}")
        # Each step prints "--> <id>" (after "--> Using cache <full id>" on a hit).
        self.used |= set(
            re.findall(r"^--> (?:Using cache )?([0-9a-f]{11,64})$", result.stdout, re.M)
        )
        self.built.add(target)
        return tag

    @staticmethod
    def tag(target: str) -> str:
        return f"{IMAGE_NAME}:{target}"

    def image_ids(self) -> set[str]:
        listing = self("images", "--all", "--no-trunc", "--format", "{{.ID}}")
        return {line.removeprefix("sha256:") for line in listing.splitlines()}

    def image_id(self, name: str) -> str:
        image_id: str = json.loads(self("inspect", "--type", "image", name))["FromImageID"]
        return image_id

    def remove_unused(self, keep: list[str]) -> None:
        """Remove the images no step of this run used (earlier code and dependencies)."""
        if not self.used:
            log.warning("no build step IDs read from buildah's output; keeping every image")
            return
        keep_ids = {self.image_id(name) for name in keep}
        stale = {
            image_id
            for image_id in self.image_ids()
            if image_id not in keep_ids and not any(image_id.startswith(u) for u in self.used)
        }
        while stale:  # children first: an image with a child is refused until the child goes
            removed = set()
            for image_id in stale:
                with contextlib.suppress(RuntimeError):
                    self("rmi", image_id)
                    removed.add(image_id)
            if not removed:
                log.warning("images left in %s: %s", STORE, sorted(stale))
                return
            stale -= removed


@contextlib.contextmanager
def image_store() -> Iterator[Buildah]:
    """The test store, held for the block (one `make test` at a time builds in it)."""
    STORE.mkdir(parents=True, exist_ok=True)
    with (STORE / "lock").open("w") as lock:
        # pytest-timeout ends a wait that would outlast the test's own limit.
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield Buildah(os.environ.get("STORAGE_DRIVER", "overlay"))


def base_image(buildah: Buildah) -> str:
    """The local Debian 12 + Python 3.11 base, made from BASE_RECIPE unless it exists."""
    key = hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{BASE_NAME}:{BASE_RECIPE['suite']}-{key}"
    if buildah.exists(name):
        return name
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="selftune-base-") as tmp:
        rootfs, archive = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
        subprocess.run(
            [
                "debootstrap",
                f"--variant={BASE_RECIPE['variant']}",
                f"--include={','.join(BASE_RECIPE['include'])}",
                BASE_RECIPE["suite"],
                str(rootfs),
                BASE_RECIPE["mirror"],
            ],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        for path in BASE_RECIPE["cleanup"]:
            for item in (rootfs / path).glob("*"):
                if item.is_file():
                    item.unlink()
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."], check=True
        )
        container = buildah("from", "scratch")
        buildah("add", container, str(archive), "/")
        env = [f"--env={k}={v}" for k, v in BASE_RECIPE["env"].items()]
        buildah("config", *env, "--cmd", "/bin/bash", container)
        buildah("commit", "--rm", container, name, timeout=600)
    for old in buildah("images", "--format", "{{.Name}}:{{.Tag}}").splitlines():
        if old.startswith(f"{BASE_NAME}:") and old != name:
            buildah("rmi", old)
    return name
