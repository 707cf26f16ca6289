"""An image as an OCI archive: what `ctr -n k8s.io images import FILE` loads into the real node's
containerd, and what the cache keeps (imagecache.py names each after its inputs' key). Written from
buildah's store, and read back into it (the base, when the store lost it).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .buildah import Buildah


@dataclass(frozen=True)
class ImageArchive:
    """One image exported as an OCI archive. `ref` is the name the manifests use; the archive also
    holds `local_ref` (localhost/aliasroll/NAME:local), a name that does not move with the version."""

    name: str
    ref: str
    local_ref: str
    path: Path
    key: str


def export(buildah: Buildah, image: str, *, refs: Sequence[str], archive: Path) -> None:
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


def load(buildah: Buildah, archive: Path, *, ref: str, policy_dir: Path) -> None:
    """Read an archive written by ``export`` into buildah's store, tagged ``ref``."""
    policy = policy_dir / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    image_id = buildah.run(
        "pull", "--quiet", "--signature-policy", str(policy), f"oci-archive:{archive}", capture=True
    )
    buildah.run("tag", image_id.splitlines()[-1], ref)
