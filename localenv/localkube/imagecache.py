"""The image cache: where it lives, what each image's archive is keyed by, and one build at a time.

An archive is named after a hash of its inputs (the Dockerfile, every file it copies, the base's
recipe; for the pause image, the static busybox it holds), so a build whose archive exists is skipped:
a warm `make images` only hashes a few files. The keys are pure: they read what a build reads.
Several worktrees share the cache, so each image keeps its few most recently used archives.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("ALIASROLL_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aliasroll"
)
IMAGES_DIR = CACHE / "images"

SUITE = "bookworm"
# python3-pip and the removal of EXTERNALLY-MANAGED give `pip install` into the system Python, as
# python:3.11-slim has it (operator/Dockerfile installs uv that way); ca-certificates and netbase are
# in python:3.11-slim too (HTTPS to the registry, /etc/services).
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "netbase")
# Bumped whenever the steps of buildah.build_base or buildah.build_pause change what they produce.
RECIPE_VERSION = "2"

# The pod sandbox: a shell that exits on TERM and otherwise waits forever (and reaps, as PID 1 must).
PAUSE_ENTRYPOINT = (
    "/bin/busybox",
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 3600 & wait $!; done",
)
KEEP_ARCHIVES = 3


class ImageError(RuntimeError):
    """An image could not be built; the message says what to fix."""


def log(message: str) -> None:
    print(f"[localkube/images] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Inputs and keys (pure)


def _logical_lines(dockerfile_text: str) -> Iterator[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    pending = ""
    for raw in dockerfile_text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending.strip():
        yield pending


def copied_sources(dockerfile_text: str) -> list[str]:
    """The build-context paths a Dockerfile's COPY/ADD instructions read (not `--from=` stages)."""
    sources: list[str] = []
    for line in _logical_lines(dockerfile_text):
        instruction, _, rest = line.partition(" ")
        if instruction.upper() not in ("COPY", "ADD"):
            continue
        rest = rest.strip()
        args: list[str]
        if rest.startswith("["):
            args = [str(a) for a in json.loads(rest)]
            flags: list[str] = []
        else:
            words = shlex.split(rest)
            flags = [w for w in words if w.startswith("--")]
            args = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from=") for f in flags) or len(args) < 2:
            continue
        sources.extend(args[:-1])
    return sources


def _context_files(context: Path, source: str) -> list[Path]:
    path = context / source
    if not path.exists():
        raise ImageError(f"the Dockerfile copies {source!r}, which is not in {context}")
    if path.is_file():
        return [path]
    # __pycache__ is left out of the key: it changes whenever the tests run, and Python ignores a
    # stale .pyc next to its source (the images compile their own bytecode anyway).
    return sorted(
        p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.relative_to(context).parts
    )


def input_key(*, context: Path, dockerfile: Path, base_key: str) -> str:
    """A hash of everything a Dockerfile build reads: the Dockerfile, each copied file (its path in
    the context and its bytes) and the base image's key."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    text = dockerfile.read_text()
    add("dockerfile", text.encode())
    add("base", base_key.encode())
    files = {f for source in copied_sources(text) for f in _context_files(context, source)}
    for f in sorted(files):
        add("file:" + f.relative_to(context).as_posix(), f.read_bytes())
    return digest.hexdigest()


def base_key() -> str:
    recipe = {"suite": SUITE, "variant": "minbase", "packages": BASE_PACKAGES, "recipe": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def pause_key(busybox: bytes) -> str:
    recipe = {"entrypoint": PAUSE_ENTRYPOINT, "recipe": RECIPE_VERSION}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(hashlib.sha256(busybox).digest())
    return digest.hexdigest()


def project_version(repo: Path = REPO) -> str:
    """The version the manifests name the images by (operator/aliasroll/__init__.py)."""
    text = (repo / "operator/aliasroll/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise ImageError("operator/aliasroll/__init__.py has no __version__ line")
    return match.group(1)


def is_static_elf(data: bytes) -> bool:
    """True for an ELF executable without a program interpreter (no dynamic loader needed)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only; this is an amd64/arm64 machine
        return False
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[0x20:0x28], order)
    phentsize = int.from_bytes(data[0x36:0x38], order)
    phnum = int.from_bytes(data[0x38:0x3A], order)
    pt_interp = 3
    return all(
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], order) != pt_interp
        for i in range(phnum)
    )


def busybox() -> Path:
    """The static busybox the pause image holds (its one input besides the recipe)."""
    found = shutil.which("busybox") or "/bin/busybox"
    path = Path(found).resolve()
    if not path.is_file() or not is_static_elf(path.read_bytes()[:4096]):
        raise ImageError(f"{path} is not a static busybox: install busybox-static (`make node-packages`)")
    return path


# ---------------------------------------------------------------------------------------------------
# The cache directory


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One build at a time per cache (make images and a test session may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prune(name: str, *, directory: Path = IMAGES_DIR, keep: int = KEEP_ARCHIVES) -> None:
    """Keep the `keep` most recently used archives of an image. More than one: worktrees of other
    branches share this cache, and each would otherwise delete the archive the other one uses."""
    archives = sorted(directory.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)
