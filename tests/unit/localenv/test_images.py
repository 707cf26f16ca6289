"""The locally built images' cache keys and the Dockerfiles' base argument (localenv/localkube:
imagecache.py, buildah.py, images.py).

An image is rebuilt exactly when one of its inputs changes: its Dockerfile, a file it copies, or the
base. Anything else in the build context (and bytecode caches the tests write) must leave the key alone,
or a warm `make images` would rebuild for nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from localkube import buildah, imagecache, images

REPO = Path(__file__).resolve().parents[3]

DOCKERFILE = """\
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
# COPY commented/out.txt /nowhere
COPY requirements.txt /tmp/requirements.txt
COPY --chown=1:1 pkg/ \\
     /opt/pkg/
RUN true
FROM ${BASE}
COPY --from=build /opt/pkg /opt/pkg
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "requirements.txt").write_text("numpy==2.0\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "unrelated.txt").write_text("not copied\n")
    return tmp_path


def key(context: Path, base_key: str = "base-1") -> str:
    return imagecache.input_key(context=context, dockerfile=context / "Dockerfile", base_key=base_key)


def test_copied_sources_skip_comments_flags_and_stages() -> None:
    assert imagecache.copied_sources(DOCKERFILE) == ["requirements.txt", "pkg/"]
    assert imagecache.copied_sources('COPY ["a b", "c", "/dest/"]\n') == ["a b", "c"]
    assert imagecache.copied_sources("COPY pyproject.toml uv.lock README.md ./\n") == [
        "pyproject.toml",
        "uv.lock",
        "README.md",
    ]


def test_key_is_stable_and_ignores_what_is_not_copied(context: Path) -> None:
    first = key(context)
    assert key(context) == first
    (context / "unrelated.txt").write_text("changed\n")
    (context / "pkg" / "__pycache__").mkdir()
    (context / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    assert key(context) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda c: (c / "Dockerfile").write_text(DOCKERFILE + "ENV A=1\n"),
        lambda c: (c / "requirements.txt").write_text("numpy==2.1\n"),
        lambda c: (c / "pkg" / "mod.py").write_text("X = 2\n"),
        lambda c: (c / "pkg" / "new.py").write_text(""),
        lambda c: (c / "pkg" / "mod.py").rename(c / "pkg" / "renamed.py"),
    ],
    ids=["dockerfile", "copied-file", "file-in-copied-dir", "new-file", "renamed-file"],
)
def test_key_changes_with_each_input(context: Path, change: Callable[[Path], object]) -> None:
    before = key(context)
    change(context)
    assert key(context) != before


def test_key_changes_with_the_base(context: Path) -> None:
    assert key(context, "base-1") != key(context, "base-2")


def test_a_missing_copied_file_is_named(context: Path) -> None:
    (context / "requirements.txt").unlink()
    with pytest.raises(imagecache.ImageError, match=r"requirements\.txt"):
        key(context)


@pytest.mark.parametrize("dockerfile", ["serving-image/Dockerfile", "operator/Dockerfile"])
def test_dockerfiles_default_the_base_to_python_slim(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    # The ARG comes before the first FROM (only then can FROM use it), and docker users keep
    # building on python:3.11-slim.
    assert instructions[0] == "ARG BASE=python:3.11-slim"
    froms = [line for line in instructions if line.startswith("FROM")]
    assert froms
    assert all(re.match(r"FROM \$\{BASE\}( AS \w+)?$", line) for line in froms)


def test_the_project_dockerfiles_have_keys() -> None:
    base = imagecache.base_key()
    for spec in images.DOCKERFILE_IMAGES.values():
        assert len(imagecache.input_key(context=REPO, dockerfile=REPO / spec.dockerfile, base_key=base)) == 64


def test_debian_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert buildah.debian_mirror(sources) == "http://mirror.example/debian"
    (sources / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert buildah.debian_mirror(sources) == "http://other.example/debian"


def test_mounts_below_deepest_first() -> None:
    mounts = "proc /r/proc proc rw 0 0\nsysfs /r/sys sysfs rw 0 0\nx /r/proc/sys/fs/binfmt_misc y rw 0 0\n"
    mounts += "proc /rx/proc proc rw 0 0\n"
    assert buildah.mounts_below(Path("/r"), mounts) == [
        Path("/r/proc/sys/fs/binfmt_misc"),
        Path("/r/proc"),
        Path("/r/sys"),
    ]


def test_prune_keeps_the_most_recently_used_archives(tmp_path: Path) -> None:
    for age, key in enumerate(["newest", "second", "third", "oldest"]):
        archive = tmp_path / f"serving-{key}.tar"
        archive.write_bytes(b"")
        os.utime(archive, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "pause-other.tar").write_bytes(b"")
    imagecache.prune("serving", directory=tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pause-other.tar",
        "serving-newest.tar",
        "serving-second.tar",
        "serving-third.tar",
    ]


def test_make_images_builds_both_dockerfiles_with_docker_when_a_daemon_answers(tmp_path: Path) -> None:
    """The Docker path of `make images` (no Docker daemon on this machine): a `docker` that answers
    `docker info` and records every call stands in for the CLI, so the commands a user's machine
    runs are the ones checked, without building anything."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["make", "-s", "images"], cwd=REPO, env=env, check=True, capture_output=True)
    version = re.search(r'__version__ = "(.+)"', (REPO / "operator/aliasroll/__init__.py").read_text())
    assert version is not None
    assert calls.read_text().splitlines() == [
        "info",
        f"build -f operator/Dockerfile -t ghcr.io/aliasroll/operator:{version[1]} .",
        f"build -f serving-image/Dockerfile -t ghcr.io/aliasroll/serving:{version[1]} .",
    ]


# What the image builds fetch is verified: Python packages by sha256, the base's Debian packages by
# the mirror's signed Release file.

PIP_INSTALL = re.compile(r"^RUN (?P<pip>\S*pip) install (?P<args>.*)$")


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of every `pip install` a Dockerfile runs."""
    text = (REPO / dockerfile).read_text()
    return [
        match["args"].split()
        for line in imagecache._logical_lines(text)
        if (match := PIP_INSTALL.match(line.strip()))
    ]


def pinned(requirements: Path) -> dict[str, list[str]]:
    """Each requirement line of a pip requirements file, with the hashes it lists."""
    found: dict[str, list[str]] = {}
    for line in requirements.read_text().replace("\\\n", " ").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        found[words[0]] = [w.removeprefix("--hash=") for w in words[1:] if w.startswith("--hash=")]
    return found


@pytest.mark.parametrize(
    ("dockerfile", "requirements"),
    [
        # The server's packages, and the holdout gate's evaluation packages in a directory of their own.
        (
            "serving-image/Dockerfile",
            ("serving-image/requirements.txt", "serving-image/gate-requirements.txt"),
        ),
        ("operator/Dockerfile", ("operator/uv-requirements.txt",)),
    ],
)
def test_every_package_a_dockerfile_installs_is_pinned_by_sha256(
    dockerfile: str, requirements: tuple[str, ...]
) -> None:
    installs = pip_installs(dockerfile)
    assert installs, f"{dockerfile} runs no pip install"
    files: list[str] = []
    for args in installs:
        # Only from a requirements file, and pip refuses any file whose hash it does not list.
        assert "--require-hashes" in args, args
        files += [arg for arg in args if not arg.startswith("-")]
    assert files == [f"/tmp/{Path(name).name}" for name in requirements], installs
    copied = imagecache.copied_sources((REPO / dockerfile).read_text())
    for name in requirements:
        assert name in copied, f"{dockerfile} does not copy {name} (nor keys its image on it)"
        lines = pinned(REPO / name)
        assert lines
        for requirement, hashes in lines.items():
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[^=]+", requirement), f"{requirement}: not pinned"
            assert hashes, f"{name}: {requirement} has no --hash"
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), requirement


def test_the_uv_the_images_and_the_makefile_install_is_one_version() -> None:
    version = re.search(r"^UV_VERSION\s*:=\s*(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert version is not None
    assert list(pinned(REPO / "operator/uv-requirements.txt")) == [f"uv=={version[1]}"]
    makefile = (REPO / "Makefile").read_text()
    assert "install --quiet --require-hashes -r operator/uv-requirements.txt" in makefile
    assert '"uv==$(UV_VERSION)"' not in makefile
    assert "--generate-hashes serving-image/requirements.in" in makefile
    assert "--generate-hashes serving-image/gate-requirements.in" in makefile


def _wheel(directory: Path) -> Path:
    """A minimal wheel: what a tampered download would be, to the hash check."""
    import base64
    import hashlib
    import zipfile

    files = {
        "demo_pinned/__init__.py": b"",
        "demo_pinned-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pinned\nVersion: 1.0\n",
        "demo_pinned-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    wheel = directory / "demo_pinned-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("demo_pinned-1.0.dist-info/RECORD", record + "demo_pinned-1.0.dist-info/RECORD,,\n")
    return wheel


@pytest.mark.parametrize("dockerfile", ["serving-image/Dockerfile", "operator/Dockerfile"])
def test_a_download_whose_hash_differs_stops_the_build(dockerfile: str, tmp_path: Path) -> None:
    """The Dockerfile's own pip install, offline against a file whose sha256 is not the pinned one."""
    import hashlib
    import shutil

    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is None:
        pytest.skip("no pip on this machine")
    links = tmp_path / "links"
    links.mkdir()
    wheel = _wheel(links)
    requirements = tmp_path / "requirements.txt"
    good = hashlib.sha256(wheel.read_bytes()).hexdigest()
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for args in pip_installs(dockerfile):  # each install: the server's, the gate's (--target)
        run = [pip, "install", "--dry-run", "--no-index", "--find-links", str(links)]
        run += [
            str(requirements)
            if arg.startswith("/tmp/")
            else f"--target={tmp_path / 'target'}"
            if arg.startswith("--target=")
            else arg
            for arg in args
        ]

        requirements.write_text(f"demo-pinned==1.0 --hash=sha256:{good}\n")
        assert subprocess.run(run, capture_output=True, text=True, env=env).returncode == 0

        requirements.write_text(f"demo-pinned==1.0 --hash=sha256:{'0' * 64}\n")
        refused = subprocess.run(run, capture_output=True, text=True, env=env)
        assert refused.returncode != 0
        assert "DO NOT MATCH THE HASHES" in refused.stderr
        assert good in refused.stderr  # what was got, beside what was expected

        requirements.write_text("demo-pinned==1.0\n")  # a requirement without a hash is refused too
        unhashed = subprocess.run(run, capture_output=True, text=True, env=env)
        assert unhashed.returncode != 0
        assert "hash" in unhashed.stderr.lower()


def test_the_base_is_debootstrapped_against_debian_s_keys(tmp_path: Path) -> None:
    keyring = tmp_path / "debian-archive-keyring.gpg"
    keyring.write_bytes(b"keys")
    command = buildah.debootstrap_command(tmp_path / "rootfs", "http://deb.example/debian", keyring=keyring)
    assert command[0] == "debootstrap"
    assert f"--keyring={keyring}" in command
    assert "--force-check-gpg" in command  # a missing signature is an error, never a warning
    assert "--no-check-gpg" not in command
    assert command[-3:] == [imagecache.SUITE, str(tmp_path / "rootfs"), "http://deb.example/debian"]
    with pytest.raises(imagecache.ImageError, match="debian-archive-keyring"):
        buildah.debootstrap_command(
            tmp_path / "rootfs", "http://deb.example/debian", keyring=tmp_path / "none"
        )


def test_the_image_pins_used_as_constraints_carry_no_hashes() -> None:
    """pip takes a hash in a constraints file as hash checking for every requirement: the real-pod
    tests' wheelhouse uses the image's pins without them (tests/support/package_index.py)."""
    from support.package_index import without_hashes

    text = without_hashes((REPO / "serving-image/requirements.txt").read_text())
    assert "--hash" not in text
    assert "\\\n" not in text
    pins = [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]
    assert pins == list(pinned(REPO / "serving-image/requirements.txt"))
