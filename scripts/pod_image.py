#!/usr/bin/env python3
"""Build the pod image from pod-image/Dockerfile with podman, on a local Debian 12 base.

The local RunPod emulator (scripts/cluster.py) runs pods as containers of this image. No
registry can be reached from the build machines, so the base comes from `mmdebstrap` (Debian's
own packages) and `podman import`, and the Python dependencies from a wheelhouse built here
with the host's pip configuration (pod-image/wheels/). The Dockerfile is the one real RunPod
builds use: only BASE_IMAGE and PIP_INSTALL_ARGS differ.

    scripts/pod_image.py build [--tag T] [--force]     # prints the image reference
    scripts/pod_image.py base                          # only the Debian base

The image is tagged with a digest of its inputs, so a second build with nothing changed takes
a second. Containers need `--runtime runc` and explicit ulimits on these machines (crun fails
with cgroups in hybrid mode; the default rlimits cannot be raised): every podman call here
passes PODMAN_RUN_FLAGS.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/gw-bookworm-base:latest"
IMAGE_REPO = "localhost/gpu-watchdog-pod"
PODMAN_RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000"]
BUILD_REQUIRES = ("setuptools>=68", "wheel")
# What the image is made of: a change in any of these makes a new tag.
INPUTS = (
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "exporters",
    "gpu_watchdog_core",
    "agent_webhook",
    "pod-image/Dockerfile",
    "pod-image/Dockerfile.dockerignore",
    "pod-image/entrypoint.sh",
    "ansible/roles/gw_service/files/gw-supervise.py",
)


def log(message: str) -> None:
    print(f"[pod-image] {message}", file=sys.stderr, flush=True)


def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, text=True, capture_output=capture)


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def inputs_digest() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        path = REPO / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base() -> str:
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    log("building the Debian 12 base with mmdebstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="gw-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", str(tarball)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        podman("import", "--quiet", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


def build_wheelhouse() -> Path:
    """Wheels of the package's dependencies for the image's Python (3.11 on Debian 12)."""
    wheels = REPO / "pod-image" / "wheels"
    wheels.mkdir(exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    log("building the wheelhouse (pip wheel)")
    result = subprocess.run(
        # The build backend too: the image's pip builds the package from source without an index.
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(REPO), *BUILD_REQUIRES],
        text=True,
        capture_output=True,
    )
    if result.returncode != 0:
        sys.stderr.write((result.stdout + result.stderr)[-6000:])
        raise SystemExit(f"pip wheel failed (exit {result.returncode})")
    return wheels


def build(tag: str | None = None, force: bool = False) -> str:
    ref = f"{IMAGE_REPO}:{tag or inputs_digest()}"
    if image_exists(ref) and not force:
        log(f"{ref} is up to date")
        return ref
    base = ensure_base()
    build_wheelhouse()
    started = time.monotonic()
    log(f"building {ref} from pod-image/Dockerfile on {base} (a few minutes)")
    result = subprocess.run(
        [
            "podman",
            "build",
            *PODMAN_RUN_FLAGS,
            "--format",
            "docker",  # SHELL (pipefail) is a Docker-format instruction
            "--file",
            "pod-image/Dockerfile",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            "PIP_INSTALL_ARGS=--no-index --find-links /tmp/wheels",
            "--tag",
            ref,
            "--tag",
            f"{IMAGE_REPO}:latest",
            ".",
        ],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-6000:])
        raise SystemExit(f"podman build failed (exit {result.returncode})")
    log(f"built {ref} in {time.monotonic() - started:.0f} s")
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the image (skipped when its inputs are unchanged)")
    p_build.add_argument("--tag", default=None, help="image tag [default: digest of the inputs]")
    p_build.add_argument("--force", action="store_true", help="build even when the tag exists")
    sub.add_parser("base", help="build only the Debian base image")
    args = parser.parse_args(argv)
    if args.command == "base":
        print(ensure_base())
    else:
        print(build(args.tag, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
