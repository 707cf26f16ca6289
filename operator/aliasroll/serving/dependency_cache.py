"""The dependency cache a namespace's pods share: resolutions and installed sets, kept and pruned.

With a cache directory (ALIASROLL_DEPENDENCY_CACHE: the operator's volume, one directory per
namespace), the resolution is kept under a key of the logged requirements, the image and the index
settings, and the installed packages under a key of the resolved set and the index settings
(`cache_key`): a second pod of the same version neither resolves nor downloads. An installed set is
written with a manifest (every file's SHA-256 and size, `write_manifest`) and used only when its files
match it (`verify_manifest`). Nothing is written into a set once it is in place (no bytecode): what the
next pod imports is what uv installed. Sets no running pod used for an hour (`keep_alive`) are pruned
oldest-first while the cache is above ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES (`prune`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

# An installed set is complete (and used) once this file, listing every file's hash, is in place.
MANIFEST = ".manifest"
# Part of every cache key: entries of another format are never read. 2: keys cover the index
# settings; a resolution file is read line by line. 3: installed sets carry a manifest that is
# checked before use, and hold no bytecode written after the install (format 2 sets may).
CACHE_FORMAT = 3
# A set a running pod uses is touched this often; one untouched for longer than STALE may be pruned.
KEEP_ALIVE_SECONDS = 600.0
STALE_SECONDS = 3600.0


def cache_key(*parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT} {sys.version_info[:2]} {platform.machine()} {sys.platform}\n".encode())
    for part in parts:
        digest.update("\n".join(part).encode() + b"\n--\n")
    return digest.hexdigest()[:32]


def write_manifest(directory: Path) -> str:
    """Lists every file under `directory` with its SHA-256 and size (the set's manifest, last)."""
    text = "".join(f"{digest} {size} {path}\n" for path, (digest, size) in sorted(_files(directory).items()))
    write_atomically(directory / MANIFEST, text)
    return text


def verify_manifest(directory: Path) -> str | None:
    """None when the files under `directory` are exactly those its manifest lists, with those
    hashes; else what differs (for the log)."""
    try:
        listed: dict[str, tuple[str, int]] = {}
        for line in (directory / MANIFEST).read_text().splitlines():
            digest, length, path = line.split(" ", 2)
            listed[path] = (digest, int(length))
    except (OSError, ValueError):
        return "no readable manifest"
    found = _files(directory, sizes_only=True)
    if set(found) != set(listed):
        extra, lost = sorted(set(found) - set(listed)), sorted(set(listed) - set(found))
        return f"{len(extra)} file(s) not in its manifest, {len(lost)} missing"
    for path, (digest, size) in listed.items():
        if found[path][1] != size or _digest(directory / path) != digest:
            return "a file differs from its manifest"
    return None


def _files(directory: Path, *, sizes_only: bool = False) -> dict[str, tuple[str, int]]:
    """Every file (and symbolic link, by its target) under `directory`, by relative path."""
    out: dict[str, tuple[str, int]] = {}
    for current, dirs, files in os.walk(directory):
        here = Path(current)
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            path = here / name
            relative = path.relative_to(directory).as_posix()
            if relative == MANIFEST:
                continue
            if path.is_symlink():
                target = os.readlink(path)
                out[relative] = ("link:" + hashlib.sha256(target.encode()).hexdigest(), len(target))
            else:
                size = path.stat().st_size
                out[relative] = ("" if sizes_only else _digest(path), size)
    return out


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + hashlib.sha256(os.readlink(path).encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def prune(cache: Path, *, max_bytes: int, keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Keeps the cache under `max_bytes`: sets no pod has used for STALE_SECONDS go, least recently
    used first, while it is above; leftovers of pods that died half-way go once stale. Sets in use
    (touched by their pods every KEEP_ALIVE_SECONDS) are never removed, so the cache may exceed the
    bound by what running pods use. Returns what it removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    envs = cache / "envs"
    entries: list[tuple[float, int, Path]] = []
    for path in sorted(envs.iterdir()) if envs.is_dir() else ():
        used = _mtime(path / MANIFEST) or _mtime(path)
        if path.name.startswith(".") or not (path / MANIFEST).is_file():
            if now - used > STALE_SECONDS:  # a partial install, or a set of an older format
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            continue
        entries.append((used, _size(path), path))
    for path in sorted((cache / "tmp").iterdir()) if (cache / "tmp").is_dir() else ():
        if now - (_mtime(path) or now) > STALE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    total = sum(size for _, size, _ in entries) + _size(cache / "resolved")
    for used, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path == keep or now - used < STALE_SECONDS:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        total -= size
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    total = 0
    for current, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(current) / name).lstat().st_size
    return total


def keep_alive(target: Path, *, every: float = KEEP_ALIVE_SECONDS) -> threading.Event:
    """Touches the set's manifest while this process runs, so pruning leaves it to the pods using it.
    Set the returned event to stop."""
    stop = threading.Event()

    def touch() -> None:
        while not stop.wait(every):
            try:
                os.utime(target / MANIFEST)
            except OSError:
                return

    threading.Thread(target=touch, name="dependency cache keep-alive", daemon=True).start()
    return stop


def touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: its sets are never pruned by this pod
        os.utime(path)
