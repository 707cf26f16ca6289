"""Container images built on this machine, with nothing pulled from a registry.

The real node of the local cluster runs images that exist nowhere else: a base made from Debian's own
packages (debootstrap), a pause image (a static busybox), and the project's serving and operator images
built from their Dockerfiles on that base. buildah builds them (vfs storage, chroot isolation, a store
of the project's own under the cache, never the machine's /var/lib/containers), and each image is
exported as an OCI archive that `ctr -n k8s.io images import FILE` loads into the node's containerd.

An archive is named after a hash of its inputs (the Dockerfile, every file it copies, the base's
recipe), so a build whose archive exists is skipped: a warm `make images` only hashes a few files.

    python -m localkube.images build [pause serving operator]   (localenv on sys.path; needs root)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
# Bumped whenever the steps of _build_base or _build_pause change what they produce.
RECIPE_VERSION = "2"
BASE_REPOSITORY = "localhost/aliasroll/base"
# A fixed tag per image, for tests that must not depend on the project's version.
LOCAL_TAG = "local"
# The pod sandbox: a shell that exits on TERM and otherwise waits forever (and reaps, as PID 1 must).
PAUSE_ENTRYPOINT = (
    "/bin/busybox",
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 3600 & wait $!; done",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the base's packages are checked against: debootstrap verifies the mirror's signed Release file
# with Debian's archive keys, and each package against the sha256 listed there; --force-check-gpg
# makes a missing key or signature an error, never a warning (debian-archive-keyring, `make node-packages`).
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
KEEP_ARCHIVES = 3


class ImageError(RuntimeError):
    """An image could not be built; the message says what to fix."""


@dataclass(frozen=True)
class ImageArchive:
    """One image exported as an OCI archive. `ref` is the name the manifests use; the archive also
    holds `local_ref` (localhost/aliasroll/NAME:local), a name that does not move with the version."""

    name: str
    ref: str
    local_ref: str
    path: Path
    key: str


@dataclass(frozen=True)
class DockerfileImage:
    name: str
    dockerfile: str  # relative to the repository root, which is also the build context
    repository: str


DOCKERFILE_IMAGES = {
    "serving": DockerfileImage("serving", "serving-image/Dockerfile", "ghcr.io/aliasroll/serving"),
    "operator": DockerfileImage("operator", "operator/Dockerfile", "ghcr.io/aliasroll/operator"),
}
ALL_NAMES = ("pause", "serving", "operator")


# ---------------------------------------------------------------------------------------------------
# Cache keys (pure)


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


# ---------------------------------------------------------------------------------------------------
# buildah


def _log(message: str) -> None:
    print(f"[localkube/images] {message}", file=sys.stderr, flush=True)


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


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise ImageError("building images with buildah needs root (or run `make images` with Docker)")
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise ImageError(f"{' and '.join(missing)} not found: install them with `make node-packages`")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One build at a time per cache (make images and a test session may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export(buildah: Buildah, image: str, *, refs: Sequence[str], archive: Path) -> None:
    """Write IMAGE as an OCI archive holding every name in `refs` (one OCI layout, one manifest
    entry per name, shared blobs), so `ctr images import` creates all of them."""
    layout = archive.with_name(archive.name + f".layout.{os.getpid()}")
    shutil.rmtree(layout, ignore_errors=True)
    partial = archive.with_name(archive.name + f".partial.{os.getpid()}")
    try:
        for ref in refs:
            buildah.run("push", "--quiet", image, f"oci:{layout}:{ref}")
        with tarfile.open(partial, "w") as tar:
            for entry in sorted(layout.iterdir()):
                tar.add(entry, arcname=entry.name)
        partial.rename(archive)  # a crash never leaves a half archive under the final name
    finally:
        shutil.rmtree(layout, ignore_errors=True)
        partial.unlink(missing_ok=True)


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


def _build_base(buildah: Buildah, *, ref: str, archive: Path) -> None:
    """Debian bookworm minbase with Python 3.11, debootstrapped straight into a scratch container."""
    mirror = debian_mirror()
    container = buildah.run("from", "--quiet", "scratch", capture=True)
    rootfs: Path | None = None
    try:
        rootfs = Path(buildah.run("mount", container, capture=True))
        _log(f"base: debootstrap {SUITE} from {mirror} (about 80 s)")
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
    _export(buildah, ref, refs=[ref], archive=archive)


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


def _ensure_base(buildah: Buildah) -> tuple[str, str]:
    """The base image's ref and key: in the store already, loaded from its archive, or built."""
    key = base_key()
    ref = f"{BASE_REPOSITORY}:{SUITE}-{key[:12]}"
    archive = IMAGES_DIR / f"base-{key[:12]}.tar"
    if archive.is_file():
        os.utime(archive)  # used now: pruning keeps the most recently used archives
    if buildah.has_image(ref):
        return ref, key
    if archive.is_file():
        _log(f"base: loading {archive}")
        policy = IMAGES_DIR / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        image_id = buildah.run(
            "pull", "--quiet", "--signature-policy", str(policy), f"oci-archive:{archive}", capture=True
        )
        buildah.run("tag", image_id.splitlines()[-1], ref)
    else:
        started = time.monotonic()
        _build_base(buildah, ref=ref, archive=archive)
        _log(f"base: built {ref} in {time.monotonic() - started:.0f} s")
    buildah.run("tag", ref, f"{BASE_REPOSITORY}:{SUITE}")
    _prune("base")
    # Base images whose archive was pruned: vfs keeps each as a full copy.
    for name in buildah.run("images", "--format", "{{.Name}}:{{.Tag}}", capture=True).split():
        tag = name.rpartition(":")[2]
        kept = (IMAGES_DIR / f"base-{tag.removeprefix(SUITE + '-')}.tar").is_file()
        if name.startswith(f"{BASE_REPOSITORY}:{SUITE}-") and name != ref and not kept:
            with contextlib.suppress(ImageError):  # only space is lost if it stays
                buildah.run("rmi", name, capture=True)
    return ref, key


def _build_pause(buildah: Buildah, *, busybox: Path, refs: Sequence[str], archive: Path) -> None:
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
    _export(buildah, refs[0], refs=refs, archive=archive)


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


def _build_dockerfile(
    buildah: Buildah, *, spec: DockerfileImage, base_ref: str, refs: Sequence[str], archive: Path
) -> None:
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
        str(REPO / spec.dockerfile),
        "--tag",
        refs[0],
        str(REPO),
    )
    for ref in refs[1:]:
        buildah.run("tag", refs[0], ref)
    _export(buildah, refs[0], refs=refs, archive=archive)


def _busybox() -> Path:
    found = shutil.which("busybox") or "/bin/busybox"
    path = Path(found).resolve()
    if not path.is_file() or not is_static_elf(path.read_bytes()[:4096]):
        raise ImageError(f"{path} is not a static busybox: install busybox-static (`make node-packages`)")
    return path


def ensure_images(*, names: Sequence[str] = ("pause", "serving")) -> dict[str, ImageArchive]:
    """Each named image (pause, serving, operator) as an OCI archive under IMAGES_DIR, built only when
    no archive for its current inputs exists. Cold: about 80 s for the base, 35 s per Dockerfile."""
    unknown = sorted(set(names) - set(ALL_NAMES))
    if unknown:
        raise ImageError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(ALL_NAMES)}")
    version = project_version()
    b_key = base_key()
    planned: dict[str, ImageArchive] = {}
    for name in names:
        local_ref = f"localhost/aliasroll/{name}:{LOCAL_TAG}"
        if name == "pause":
            key = pause_key(_busybox().read_bytes())
            ref = "localhost/aliasroll/pause:1"
        else:
            spec = DOCKERFILE_IMAGES[name]
            key = input_key(context=REPO, dockerfile=REPO / spec.dockerfile, base_key=b_key)
            ref = f"{spec.repository}:{version}"
        archive = IMAGES_DIR / f"{name}-{key[:12]}.tar"
        planned[name] = ImageArchive(name=name, ref=ref, local_ref=local_ref, path=archive, key=key)

    for image in planned.values():
        if image.path.is_file():
            os.utime(image.path)  # used now: pruning keeps the most recently used archives
    missing = [image for image in planned.values() if not image.path.is_file()]
    if not missing:
        return planned
    _require_tools()
    with _locked(IMAGES_DIR):
        buildah = Buildah()
        base_ref = ""
        for image in missing:
            if image.path.is_file():  # built by another process while this one waited for the lock
                continue
            started = time.monotonic()
            refs = [image.ref, image.local_ref]
            _log(f"{image.name}: building {image.ref} (inputs {image.key[:12]})")
            if image.name == "pause":
                _build_pause(buildah, busybox=_busybox(), refs=refs, archive=image.path)
            else:
                if not base_ref:
                    base_ref, _ = _ensure_base(buildah)
                _build_dockerfile(
                    buildah,
                    spec=DOCKERFILE_IMAGES[image.name],
                    base_ref=base_ref,
                    refs=refs,
                    archive=image.path,
                )
            _prune(image.name)
            _log(f"{image.name}: built in {time.monotonic() - started:.0f} s -> {image.path}")
        # Images replaced by a rebuild are left untagged in the store; vfs keeps each layer as a
        # full copy, so they go.
        with contextlib.suppress(ImageError):
            buildah.run("rmi", "--prune", capture=True)
    return planned


def _prune(name: str, *, directory: Path = IMAGES_DIR, keep: int = KEEP_ARCHIVES) -> None:
    """Keep the `keep` most recently used archives of an image. More than one: worktrees of other
    branches share this cache, and each would otherwise delete the archive the other one uses."""
    archives = sorted(directory.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)


def remove_all() -> None:
    """Remove the image store and every archive (`python -m localkube.images clean`)."""
    if not IMAGES_DIR.exists():
        return
    with _locked(IMAGES_DIR):
        if shutil.which("buildah") and (IMAGES_DIR / "storage").exists():
            with contextlib.suppress(ImageError):
                buildah = Buildah()
                buildah.run("rm", "--all", capture=True)
                buildah.run("rmi", "--all", "--force", capture=True)
    shutil.rmtree(IMAGES_DIR)


def _describe(images: Iterable[ImageArchive]) -> str:
    return "\n".join(f"{i.name}\t{i.ref}\t{i.local_ref}\t{i.path}" for i in images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localkube.images", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build what is missing, print NAME REF LOCAL_REF ARCHIVE per image")
    build.add_argument("names", nargs="*", help=f"any of {', '.join(ALL_NAMES)} (default: all)")
    sub.add_parser("clean", help=f"remove {IMAGES_DIR} (store and archives)")
    args = parser.parse_args(argv)
    try:
        if args.command == "clean":
            remove_all()
            return 0
        started = time.monotonic()
        images = ensure_images(names=args.names or ALL_NAMES)
        print(_describe(images.values()))
        _log(f"images ready in {time.monotonic() - started:.1f} s")
    except (ImageError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
