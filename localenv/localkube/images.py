"""Container images built on this machine, with nothing pulled from a registry.

The real node of the local cluster runs images that exist nowhere else: a base made from Debian's own
packages (debootstrap), a pause image (a static busybox), and the project's serving and operator images
built from their Dockerfiles on that base. buildah builds them (buildah.py), and each image is
exported as an OCI archive (imagearchive.py) that `ctr -n k8s.io images import FILE` loads into the
node's containerd.

An archive is named after a hash of its inputs (imagecache.py), so a build whose archive exists is
skipped: a warm `make images` only hashes a few files.

    python -m localkube.images build [pause serving operator]   (localenv on sys.path; needs root)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import imagearchive
from .buildah import Buildah, build_base, build_dockerfile, build_pause, require_tools
from .imagearchive import ImageArchive
from .imagecache import (
    IMAGES_DIR,
    REPO,
    SUITE,
    ImageError,
    base_key,
    busybox,
    input_key,
    locked,
    log,
    pause_key,
    project_version,
    prune,
)

BASE_REPOSITORY = "localhost/aliasroll/base"
# A fixed tag per image, for tests that must not depend on the project's version.
LOCAL_TAG = "local"


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
        log(f"base: loading {archive}")
        imagearchive.load(buildah, archive, ref=ref, policy_dir=IMAGES_DIR)
    else:
        started = time.monotonic()
        build_base(buildah, ref=ref)
        imagearchive.export(buildah, ref, refs=[ref], archive=archive)
        log(f"base: built {ref} in {time.monotonic() - started:.0f} s")
    buildah.run("tag", ref, f"{BASE_REPOSITORY}:{SUITE}")
    prune("base")
    # Base images whose archive was pruned: vfs keeps each as a full copy.
    for name in buildah.run("images", "--format", "{{.Name}}:{{.Tag}}", capture=True).split():
        tag = name.rpartition(":")[2]
        kept = (IMAGES_DIR / f"base-{tag.removeprefix(SUITE + '-')}.tar").is_file()
        if name.startswith(f"{BASE_REPOSITORY}:{SUITE}-") and name != ref and not kept:
            with contextlib.suppress(ImageError):  # only space is lost if it stays
                buildah.run("rmi", name, capture=True)
    return ref, key


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
            key = pause_key(busybox().read_bytes())
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
    require_tools()
    with locked(IMAGES_DIR):
        buildah = Buildah()
        base_ref = ""
        for image in missing:
            if image.path.is_file():  # built by another process while this one waited for the lock
                continue
            started = time.monotonic()
            refs = [image.ref, image.local_ref]
            log(f"{image.name}: building {image.ref} (inputs {image.key[:12]})")
            if image.name == "pause":
                build_pause(buildah, busybox=busybox(), refs=refs)
            else:
                if not base_ref:
                    base_ref, _ = _ensure_base(buildah)
                build_dockerfile(
                    buildah, dockerfile=DOCKERFILE_IMAGES[image.name].dockerfile, base_ref=base_ref, refs=refs
                )
            imagearchive.export(buildah, image.ref, refs=refs, archive=image.path)
            prune(image.name)
            log(f"{image.name}: built in {time.monotonic() - started:.0f} s -> {image.path}")
        # Images replaced by a rebuild are left untagged in the store; vfs keeps each layer as a
        # full copy, so they go.
        with contextlib.suppress(ImageError):
            buildah.run("rmi", "--prune", capture=True)
    return planned


def remove_all() -> None:
    """Remove the image store and every archive (`python -m localkube.images clean`)."""
    if not IMAGES_DIR.exists():
        return
    with locked(IMAGES_DIR):
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
        log(f"images ready in {time.monotonic() - started:.1f} s")
    except (ImageError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
