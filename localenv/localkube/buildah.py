"""Building the images with buildah, nothing pulled from a registry: the base debootstrapped from
Debian's own packages, the pause image (a static busybox) from scratch, and the project's Dockerfiles
on that base. Each build leaves its image in the project's own store (vfs storage under the cache,
chroot isolation, never the machine's /var/lib/containers); imagearchive.py exports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .imagecache import BASE_PACKAGES, IMAGES_DIR, PAUSE_ENTRYPOINT, REPO, SUITE, ImageError, log

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the base's packages are checked against: debootstrap verifies the mirror's signed Release file
# with Debian's archive keys, and each package against the sha256 listed there; --force-check-gpg
# makes a missing key or signature an error, never a warning (debian-archive-keyring, `make node-packages`).
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class Buildah:
    """buildah with the project's own store: vfs (works on any filesystem, nothing mounted that could
    be left behind) under IMAGES_DIR, chroot isolation (no runtime needed inside a build)."""

    def __init__(self, root: Path = IMAGES_DIR) -> None:
        self.root = root
        self.storage = root / "storage"
        self.runroot = root / "run"

    def command(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.storage),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, capture: bool = False) -> str:
        env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
        result = subprocess.run(
            self.command(*args),
            env=env,
            check=False,
            text=True,
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=subprocess.PIPE if capture else None,
        )
        if result.returncode != 0:
            detail = (result.stderr or "").strip()
            raise ImageError(f"buildah {' '.join(args[:2])} failed ({result.returncode}): {detail}")
        return (result.stdout or "").strip()

    def has_image(self, ref: str) -> bool:
        try:
            self.run("inspect", "--type", "image", ref, capture=True)
        except ImageError:
            return False
        return True


def require_tools() -> None:
    if os.geteuid() != 0:
        raise ImageError("building images with buildah needs root (or run `make images` with Docker)")
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise ImageError(f"{' and '.join(missing)} not found: install them with `make node-packages`")


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d"), *, suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt uses for `suite` main (deb822 .sources or one-line .list)."""
    override = os.environ.get("ALIASROLL_DEBIAN_MIRROR")
    if override:
        return override
    files = sorted(sources_dir.glob("*.sources")) + sorted(sources_dir.glob("*.list"))
    files.append(sources_dir.parent / "sources.list")
    for f in files:
        if not f.is_file():
            continue
        if f.suffix == ".sources":
            for paragraph in re.split(r"\n\s*\n", f.read_text()):
                fields: dict[str, list[str]] = {}
                for line in paragraph.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if (
                    "deb" in fields.get("types", [])
                    and suite in fields.get("suites", [])
                    and "main" in fields.get("components", [])
                    and fields.get("enabled", ["yes"]) != ["no"]
                    and fields.get("uris")
                ):
                    return fields["uris"][0]
        else:
            for line in f.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                    return words[1]
    raise ImageError(
        f"no Debian mirror for {suite} main in {sources_dir} or {sources_dir.parent / 'sources.list'}; "
        "set ALIASROLL_DEBIAN_MIRROR to one"
    )


def debootstrap_command(rootfs: Path, mirror: str, *, keyring: Path = DEBIAN_KEYRING) -> list[str]:
    """debootstrap of the base, verified: the Release file's signature against Debian's keys (a
    download that does not match its signed sha256 stops the build)."""
    if not keyring.is_file():
        raise ImageError(
            f"{keyring} is missing: debootstrap would not verify what it downloads; install "
            "debian-archive-keyring (`make node-packages`)"
        )
    return [
        "debootstrap",
        "--variant=minbase",
        f"--keyring={keyring}",
        "--force-check-gpg",
        f"--include={','.join(BASE_PACKAGES)}",
        SUITE,
        str(rootfs),
        mirror,
    ]


def build_base(buildah: Buildah, *, ref: str) -> None:
    """Debian bookworm minbase with Python 3.11, debootstrapped straight into a scratch container."""
    mirror = debian_mirror()
    container = buildah.run("from", "--quiet", "scratch", capture=True)
    rootfs: Path | None = None
    try:
        rootfs = Path(buildah.run("mount", container, capture=True))
        log(f"base: debootstrap {SUITE} from {mirror} (about 80 s)")
        subprocess.run(debootstrap_command(rootfs, mirror), check=True, stdout=subprocess.DEVNULL)
        (rootfs / "usr/bin/python").symlink_to("python3")
        # pip may install into the system Python, as in python:3.11-slim (operator/Dockerfile does).
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        # Where pip and uv look for system-wide configuration (XDG_CONFIG_DIRS' default): builds mount
        # their settings here, over a directory that exists, so no empty mount point is committed.
        (rootfs / "etc/xdg").mkdir(exist_ok=True)
        # Device nodes come from the runtime; the package cache and lists are not part of an image.
        for leftovers in ("dev", "var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftovers).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        buildah.run("umount", container, capture=True)
        buildah.run(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            '["python3"]',
            container,
        )
        buildah.run("commit", "--quiet", "--rm", container, ref, capture=True)
    except BaseException:
        # debootstrap mounts /proc and /sys inside the target; an interrupted run can leave them, and
        # removing the container must never descend into them.
        if rootfs is not None:
            _unmount_below(rootfs)
        with contextlib.suppress(ImageError):
            buildah.run("rm", container, capture=True)
        raise


def mounts_below(directory: Path, mountinfo: str) -> list[Path]:
    """Mount points at or below `directory` in a /proc/self/mounts text, deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if point == directory or directory in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unmount_below(directory: Path) -> None:
    for point in mounts_below(directory, Path("/proc/self/mounts").read_text()):
        if subprocess.run(["umount", str(point)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], check=False)


def build_pause(buildah: Buildah, *, busybox: Path, refs: Sequence[str]) -> None:
    """The pod sandbox: ``busybox`` alone, from scratch, running PAUSE_ENTRYPOINT."""
    container = buildah.run("from", "--quiet", "scratch", capture=True)
    try:
        buildah.run("copy", "--quiet", container, str(busybox), "/bin/busybox", capture=True)
        buildah.run("config", "--entrypoint", json.dumps(PAUSE_ENTRYPOINT), "--cmd", "", container)
        buildah.run("commit", "--quiet", "--rm", container, refs[0], capture=True)
    except BaseException:
        with contextlib.suppress(ImageError):
            buildah.run("rm", container, capture=True)
        raise
    for ref in refs[1:]:
        buildah.run("tag", refs[0], ref)


def _build_args_for_network() -> list[str]:
    """Mounts that let pip and uv inside a build reach the package index as they do on this host:
    the host's CA bundle (it may hold a CA that intercepts TLS) over the base's own, and pip and uv
    settings that point both at it, over the base's empty /etc/xdg. Mounted over paths that exist in
    the base, they leave nothing in the committed image."""
    if not HOST_CA_BUNDLE.is_file():
        return ["--network", "host"]
    config = IMAGES_DIR / "build-config"
    (config / "pip").mkdir(parents=True, exist_ok=True)
    (config / "uv").mkdir(parents=True, exist_ok=True)
    (config / "pip" / "pip.conf").write_text(
        f"[global]\ncert = {HOST_CA_BUNDLE}\nroot-user-action = ignore\n"
    )
    (config / "uv" / "uv.toml").write_text("system-certs = true\n")
    return [
        "--network",
        "host",
        "--volume",
        f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
        "--volume",
        f"{config}:/etc/xdg:ro",
    ]


def build_dockerfile(buildah: Buildah, *, dockerfile: str, base_ref: str, refs: Sequence[str]) -> None:
    """``dockerfile`` (relative to the repository, which is the build context) on the base ``base_ref``."""
    buildah.run(
        "bud",
        "--pull=never",
        "--isolation",
        "chroot",
        "--layers=false",
        "--quiet",
        "--build-arg",
        f"BASE={base_ref}",
        *_build_args_for_network(),
        "--file",
        str(REPO / dockerfile),
        "--tag",
        refs[0],
        str(REPO),
    )
    for ref in refs[1:]:
        buildah.run("tag", refs[0], ref)
