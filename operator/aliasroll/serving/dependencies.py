"""What a model version needs beyond the image, installed at start with uv into scratch.

MLflow records a version's environment beside the model: the Python it was logged under
(python_env.yaml) and its pinned requirements (requirements.txt). Before the model loads:
1. a Python of another minor than the image's cannot be honoured: the version fails to start;
2. the requirement files are read under the operator's policy (`Policy`): only
   `name[extras] specifier ; marker` lines, `-r`/`-c` includes inside the model directory, and
   `--hash` options; a direct reference (a URL, a VCS link, a path) only where the operator allows it;
3. requirements the image already satisfies are left alone (the fast path: nothing is resolved);
4. otherwise uv resolves them, preferring the versions the image has (so numpy, pandas and the
   server's own packages are not installed twice), and installs only the difference with
   `uv pip install --target` into a directory put first on sys.path. Wheels only (`--no-build`),
   unless the operator allows source builds; hashes the model gives are checked.

The index is the pod's: uv reads UV_INDEX_URL / UV_DEFAULT_INDEX / UV_FIND_LINKS itself, and pip's
PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT are passed on when uv's own are not set. uv gets only
those settings, the CA bundle and the proxies: never the registry's credentials or the rest of the pod's
environment (`uv_environment`).

With a cache directory (ALIASROLL_DEPENDENCY_CACHE: the operator's volume, one directory per
namespace), the resolution is kept under a key of the logged requirements, the image and the index
settings, and the installed packages under a key of the resolved set and the index settings: a second
pod of the same version neither resolves nor downloads. An installed set is written with a manifest
(every file's SHA-256 and size) and used only when its files match it; a cached resolution only when
every line is a pin the policy accepts. Nothing is written into a set once it is in place (no bytecode):
what the next pod imports is what uv installed. Sets no running pod used for an hour are pruned
oldest-first while the cache is above ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES.

Messages (the pod's termination message, so the resource's status) name requirements by their
normalised name (and pinned version) and say what failed in fixed words: never a raw line of the
model's files nor uv's output, which goes to the log only, redacted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from aliasroll.serving.redaction import redact, secret_values

log = logging.getLogger("aliasroll.serving")

# The server itself provides MLflow (as mlflow-skinny): a logged `mlflow==x` must not pull the full
# tracking server into the pod.
PROVIDED_BY_SERVER = frozenset({"mlflow", "mlflow-skinny"})
# An installed set is complete (and used) once this file, listing every file's hash, is in place.
MANIFEST = ".manifest"
COMPILE = ("pip", "compile", "--no-header", "--no-annotate")
# Part of every cache key: entries of another format are never read. 2: keys cover the index
# settings; a resolution file is read line by line. 3: installed sets carry a manifest that is
# checked before use, and hold no bytecode written after the install (format 2 sets may).
CACHE_FORMAT = 3
# What uv reads that changes what a resolution yields or where its packages come from, besides the
# requirements and the image (credentials are left out: they decide access, not content).
RESOLUTION_SETTINGS = (
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
    "UV_INDEX_STRATEGY",
    "UV_PRERELEASE",
    "UV_RESOLUTION",
    "UV_EXCLUDE_NEWER",
)
# Everything else uv may be given: the CA bundle, proxies, timeouts, and named indexes' credentials
# (UV_INDEX_<NAME>_USERNAME/PASSWORD, taken by the UV_INDEX prefix). Nothing else of the pod's
# environment reaches uv or what it runs: not MLFLOW_TRACKING_* nor cloud credentials.
UV_PASSED = frozenset(
    {
        *RESOLUTION_SETTINGS,
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "UV_NATIVE_TLS",
        "UV_INSECURE_HOST",
        "UV_HTTP_TIMEOUT",
        "UV_HTTP_RETRIES",
        "UV_CONCURRENT_DOWNLOADS",
        "NETRC",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    }
)
UV_PASSED_PREFIXES = ("UV_INDEX_",)
# pip options of a requirements file that only say where packages come from, or how pip picks them:
# the cluster's choice (the pod's index settings) wins; they are dropped.
DROPPED_OPTIONS = frozenset(
    {
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "--no-index",
        "--trusted-host",
        "--pre",
        "--prefer-binary",
        "--only-binary",
        "--no-binary",
        "--use-feature",
        "--require-hashes",
    }
)
# Includes nested deeper than this are refused (a cycle, or a file that includes itself).
MAX_INCLUDE_DEPTH = 8
# How uv says a resolution has no solution (a recorded pin against the image's versions), as opposed
# to failing to reach or read the index.
NO_SOLUTION = "No solution found when resolving dependencies"
# A set a running pod uses is touched this often; one untouched for longer than STALE may be pruned.
KEEP_ALIVE_SECONDS = 600.0
STALE_SECONDS = 3600.0


class DependencyError(Exception):
    """The version's environment cannot be honoured by this image and index; the message says what."""


class NoSolution(DependencyError):
    """uv found the requirements cannot be resolved together (not that the index failed)."""


class RequirementsRefused(DependencyError):
    """The model's requirement files hold what the operator's policy refuses."""


@dataclass(frozen=True)
class Policy:
    """What the operator allows beyond `name[extras] specifier ; marker` requirements from the index
    (its ALIASROLL_DEPENDENCY_* settings, given to the pods as ALIASROLL_DIRECT_REFERENCES and
    ALIASROLL_SOURCE_BUILDS)."""

    direct_references: bool = False  # name @ URL, VCS links, paths inside the model directory
    source_builds: bool = False  # sdists built at install: their build backends run


@dataclass(frozen=True)
class ModelEnvironment:
    python: str | None  # "3.11.7", as MLflow recorded it
    requirements: tuple[str, ...]  # normalised requirement lines (or allowed direct references)
    constraints: tuple[str, ...] = ()  # from the model's -c files
    # Hashes the model gives (`--hash=sha256:...`), by canonical name: checked at install.
    hashes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What must happen before the model loads."""

    missing: tuple[str, ...]  # the logged requirements the image does not satisfy
    constraints: tuple[str, ...]  # the image's packages, pinned, that the resolution must keep
    model_constraints: tuple[str, ...] = ()  # the model's own constraints, always kept


def read_environment(model_dir: Path, policy: Policy | None = None) -> ModelEnvironment:
    """The Python and requirements MLflow logged with the version (MLmodel, python_env.yaml), read
    under `policy`: raises RequirementsRefused naming every line it refuses."""
    reader = _Reader(model_dir, policy or Policy())
    flavor: Mapping[str, object] = {}
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
        flavor = flavors.get("python_function") or {}
    env_files = flavor.get("env")
    env_name = env_files.get("virtualenv") if isinstance(env_files, Mapping) else None
    python = flavor.get("python_version")
    python_env = reader.inside(str(env_name or "python_env.yaml"), model_dir, where="MLmodel")
    if python_env is not None and python_env.is_file():
        recorded = yaml.safe_load(python_env.read_text()) or {}
        python = recorded.get("python") or python
        items = [str(line) for line in recorded.get("dependencies") or []]
        reader.lines(items, base=model_dir, where=_where(model_dir, python_env, "item"), depth=0)
    elif (model_dir / "requirements.txt").is_file():
        reader.lines(["-r requirements.txt"], base=model_dir, where="(the model's files)", depth=0)
    if reader.problems:
        raise RequirementsRefused("; ".join(dict.fromkeys(reader.problems)))
    return ModelEnvironment(
        python=str(python) if python else None,
        requirements=tuple(reader.requirements),
        constraints=tuple(reader.constraints),
        hashes={name: tuple(found) for name, found in reader.hashes.items()},
    )


_COMMENT = re.compile(r"(^|\s+)#.*$")
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s*=\s*|\s+|(?<=^-r)|(?<=^-c))(\S.*)$")
_EDITABLE = re.compile(r"^(-e|--editable)(?:\s*=\s*|\s+)(\S.*)$")
_OPTION_START = re.compile(r"\s--?[A-Za-z]")
_HASH = re.compile(r"^(sha256|sha384|sha512):[0-9a-f]{32,128}$")
_SAFE_PATH = re.compile(r"[^A-Za-z0-9._/-]")


class _Reader:
    """Reads requirement files the way pip does (continuations, comments, includes), keeping only
    what the policy accepts; `problems` says what it refused, in fixed words and names."""

    def __init__(self, model_dir: Path, policy: Policy) -> None:
        self.root = model_dir.resolve()
        self.policy = policy
        self.requirements: list[str] = []
        self.constraints: list[str] = []
        self.hashes: dict[str, list[str]] = {}
        self.problems: list[str] = []
        self._read: set[Path] = set()

    def inside(self, target: str, base: Path, *, where: str) -> Path | None:
        """`target` (as a file names it) as a path inside the model directory, or None (a problem)."""
        pure = PurePosixPath(target)
        if "://" in target or pure.is_absolute() or ".." in pure.parts or target.startswith("~"):
            self.problems.append(f"{where} names a file outside the model directory")
            return None
        path = (base / target).resolve()
        if not path.is_relative_to(self.root):  # a symbolic link out of it
            self.problems.append(f"{where} names a file outside the model directory")
            return None
        return path

    def include(self, target: str, *, base: Path, where: str, constraints: bool, depth: int) -> None:
        path = self.inside(target, base, where=where)
        if path is None:
            return
        if depth >= MAX_INCLUDE_DEPTH:
            self.problems.append(f"{where} includes files more than {MAX_INCLUDE_DEPTH} deep")
            return
        if not path.is_file():
            self.problems.append(f"{where} includes a file the model does not have")
            return
        key = path if not constraints else path.with_name(path.name + "\0c")
        if key in self._read:
            return  # included twice (or a cycle): once is enough
        self._read.add(key)
        text = path.read_text(errors="replace")
        self.lines(
            _logical_lines(text),
            base=path.parent,
            where=_where(self.root, path, "line"),
            depth=depth + 1,
            constraints=constraints,
        )

    def lines(
        self, lines: Iterable[str], *, base: Path, where: str, depth: int, constraints: bool = False
    ) -> None:
        for number, raw in enumerate(lines, start=1):
            line = _COMMENT.sub("", raw).strip()
            if not line:
                continue
            at = f"{where} {number}"
            if (included := _INCLUDE.match(line)) is not None:
                self.include(
                    included[2].strip(),
                    base=base,
                    where=at,
                    constraints=constraints or included[1] in ("-c", "--constraint"),
                    depth=depth,
                )
            elif (editable := _EDITABLE.match(line)) is not None:
                self.direct(editable[2].strip(), base=base, where=at, constraints=constraints)
            elif line.startswith("-"):
                option = line.split("=", 1)[0].split(None, 1)[0]
                if option not in DROPPED_OPTIONS:
                    self.problems.append(f"{at} is a pip option the server does not take")
                else:
                    log.info("dependencies: %s: %s dropped (the pod's index settings apply)", at, option)
            else:
                self.requirement(line, base=base, where=at, constraints=constraints)

    def requirement(self, line: str, *, base: Path, where: str, constraints: bool) -> None:
        spec, options = _split_options(line)
        try:
            requirement = Requirement(spec)
        except InvalidRequirement:
            if _looks_direct(spec):
                self.direct(spec, base=base, where=where, constraints=constraints)
            else:
                self.problems.append(
                    f"{where} is not a requirement of the form name[extras] specifier ; marker"
                )
            return
        name = canonicalize_name(requirement.name)
        hashes: list[str] = []
        for option, value in options:
            if option == "--hash" and value is not None and _HASH.match(value):
                hashes.append(value)
            elif option == "--hash":
                self.problems.append(f"{name}: a --hash that is not algorithm:hex ({where})")
            else:
                self.problems.append(f"{name}: carries a pip option the server does not take ({where})")
        if requirement.url is not None and not self.policy.direct_references:
            self.problems.append(_direct_refused(name))
            return
        if hashes:
            self.hashes.setdefault(name, []).extend(hashes)
        (self.constraints if constraints else self.requirements).append(str(requirement))

    def direct(self, target: str, *, base: Path, where: str, constraints: bool) -> None:
        """A URL, VCS link or path without a name: refused unless the operator allows them."""
        if not self.policy.direct_references:
            self.problems.append(_direct_refused(None, where))
            return
        if "://" not in target and not target.startswith(("git+", "hg+", "svn+", "bzr+")):
            path = self.inside(target, base, where=where)
            if path is None:
                return
            target = str(path)
        (self.constraints if constraints else self.requirements).append(target)


def _direct_refused(name: str | None, where: str = "") -> str:
    what = name if name is not None else f"{where}"
    return (
        f"{what}: a direct reference (a URL, VCS link or path) bypasses the cluster's index; "
        "the operator allows them with ALIASROLL_DEPENDENCY_DIRECT_REFERENCES"
    )


def _looks_direct(spec: str) -> bool:
    return (
        "://" in spec
        or spec.startswith((".", "/", "~", "git+", "hg+", "svn+", "bzr+"))
        or spec.endswith((".whl", ".tar.gz", ".zip", ".tar.bz2"))
    )


def _split_options(line: str) -> tuple[str, list[tuple[str, str | None]]]:
    """`name==1 --hash=sha256:... --hash sha256:...` -> the requirement and its options."""
    found = _OPTION_START.search(line)
    if found is None:
        return line, []
    spec, rest = line[: found.start()].strip(), line[found.start() :].split()
    options: list[tuple[str, str | None]] = []
    index = 0
    while index < len(rest):
        token = rest[index]
        if "=" in token:
            option, value = token.split("=", 1)
            options.append((option, value))
        elif index + 1 < len(rest) and not rest[index + 1].startswith("-"):
            options.append((token, rest[index + 1]))
            index += 1
        else:
            options.append((token, None))
        index += 1
    return spec, options


def _logical_lines(text: str) -> list[str]:
    """pip's lines: a backslash at the end of a line continues it (pip-compile --generate-hashes)."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        out.append(pending + raw)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _where(root: Path, path: Path, unit: str) -> str:
    """`requirements.txt line` for messages: the file's path inside the model directory, plainly."""
    try:
        shown = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        shown = path.name
    return f"{_SAFE_PATH.sub('?', shown)[:80]} {unit}"


def python_mismatch(logged: str | None, running: tuple[int, int]) -> str | None:
    """Why the image's Python cannot load the version, or None (patch releases are compatible)."""
    if not logged:
        return None
    try:
        version = Version(logged)
    except InvalidVersion:
        return None
    if (version.major, version.minor) == running:
        return None
    return (
        f"the model was logged under Python {version} and the serving image runs Python "
        f"{running[0]}.{running[1]}: log the model again under Python {running[0]}.{running[1]}, or serve "
        f"it from an image of Python {version.major}.{version.minor} with spec.serving.dependencies: image"
    )


def plan(requirements: Sequence[str], installed: Mapping[str, str], constraints: Sequence[str] = ()) -> Plan:
    """Which logged requirements the image lacks, and the image's pins the resolution keeps.

    `installed` maps canonical names to versions. A requirement the image satisfies is not
    reinstalled; one it satisfies at another version (a pin MLflow recorded) is, and the image's
    version of that package is then not a constraint. Direct references (only where the policy let
    them through) are left to uv.
    """
    missing: list[str] = []
    unpinned: set[str] = set()
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            missing.append(line)
            continue
        name = canonicalize_name(requirement.name)
        if name in PROVIDED_BY_SERVER:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        have = installed.get(name)
        if (
            have is not None
            and (requirement.url is None)
            and requirement.specifier.contains(have, prereleases=True)
        ):
            continue
        missing.append(line)
        unpinned.add(name)
    for line in constraints:  # a model constraint the image's version breaks frees that package
        try:
            constraint = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(constraint.name)
        have = installed.get(name)
        if have is not None and not constraint.specifier.contains(have, prereleases=True):
            unpinned.add(name)
    image = tuple(f"{name}=={version}" for name, version in sorted(installed.items()) if name not in unpinned)
    kept = tuple(line for line in constraints if _name(line) not in PROVIDED_BY_SERVER)
    return Plan(
        missing=tuple(missing),
        constraints=image if missing else (),
        model_constraints=kept if missing else (),
    )


def to_install(resolved: Iterable[str], installed: Mapping[str, str]) -> tuple[str, ...]:
    """The resolved pins the image does not already have at that version."""
    out: list[str] = []
    for line in resolved:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            out.append(line)
            continue
        pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        have = installed.get(canonicalize_name(requirement.name))
        if have is not None and pinned and Version(have) == Version(pinned[0]):
            continue
        out.append(line)
    return tuple(sorted(out))


def with_hashes(wanted: Iterable[str], hashes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The install lines, each with the hashes the model gives for its package (uv checks them)."""
    out: list[str] = []
    for line in wanted:
        given = hashes.get(_name(line) or "")
        out.append(line + "".join(f" --hash={value}" for value in given) if given else line)
    return tuple(out)


def image_packages() -> dict[str, str]:
    """The distributions the running interpreter sees (the image's), by canonical name."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def index_description(env: Mapping[str, str]) -> str:
    """The index the pod installs from, as a message may show it (no credentials)."""
    for variable in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if env.get(variable):
            return f"{_without_credentials(env[variable])} ({variable})"
    if env.get("UV_FIND_LINKS"):
        return f"{_without_credentials(env['UV_FIND_LINKS'])} (UV_FIND_LINKS)"
    return "https://pypi.org/simple (no UV_INDEX_URL or PIP_INDEX_URL is set)"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def resolution_settings(env: Mapping[str, str]) -> tuple[str, ...]:
    """The settings uv resolves and installs with (RESOLUTION_SETTINGS, pip's carried over), as
    `NAME=value` without credentials: part of the cache keys, so another index resolves anew."""
    seen = _with_pip_settings(env)
    return tuple(
        f"{name}={_CREDENTIALS.sub('//', seen[name])}" for name in RESOLUTION_SETTINGS if seen.get(name)
    )


# user:password@ (or a token@) in any URL of a setting, which may list several.
_CREDENTIALS = re.compile(r"//[^/@\s]*@")


def _with_pip_settings(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(env)
    if not (env.get("UV_INDEX_URL") or env.get("UV_DEFAULT_INDEX")) and env.get("PIP_INDEX_URL"):
        out["UV_INDEX_URL"] = env["PIP_INDEX_URL"]
    if not (env.get("UV_EXTRA_INDEX_URL") or env.get("UV_INDEX")) and env.get("PIP_EXTRA_INDEX_URL"):
        out["UV_EXTRA_INDEX_URL"] = env["PIP_EXTRA_INDEX_URL"]
    if not env.get("SSL_CERT_FILE") and env.get("PIP_CERT"):
        out["SSL_CERT_FILE"] = env["PIP_CERT"]
    return out


def uv_environment(env: Mapping[str, str], work: Path) -> dict[str, str]:
    """uv's whole environment: the index settings (pip's carried over where uv's own are not set),
    the CA bundle and proxies, and nothing else of the pod's (no registry credentials)."""
    given = _with_pip_settings(env)
    out = {
        name: value
        for name, value in given.items()
        if name in UV_PASSED or name.startswith(UV_PASSED_PREFIXES)
    }
    out.update(
        UV_CACHE_DIR=str(work / "uv"),  # the pod's own: a shared one is not verified
        UV_PYTHON_DOWNLOADS="never",  # the image's interpreter or nothing
        UV_NO_PROGRESS="1",
        UV_NO_CONFIG="1",  # no uv.toml or pyproject.toml of the model's (or of any directory)
        TMPDIR=str(work),
    )
    return out


def _uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise DependencyError("uv is not installed in the serving image") from None
        return found


def _key(*parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT} {sys.version_info[:2]} {platform.machine()} {sys.platform}\n".encode())
    for part in parts:
        digest.update("\n".join(part).encode() + b"\n--\n")
    return digest.hexdigest()[:32]


def resolution_text(lines: Iterable[str]) -> str:
    """A resolution as the cache keeps it: one requirement a line."""
    return "".join(f"{line}\n" for line in lines)


def resolution_lines(text: str) -> list[str]:
    """The requirements of uv's output or of a cached resolution, one a line. A line is one
    requirement whatever it holds: `name @ https://...`, `name==1.0 ; python_version < "3.12"`."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def acceptable_resolution(lines: Sequence[str], steps: Plan, policy: Policy) -> bool:
    """A cached resolution is used only if it is what uv writes under this policy: every line an
    exact pin of a package (a direct reference only where allowed), and every missing package in it."""
    names: set[str] = set()
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            if not policy.direct_references:
                return False
            continue
        if requirement.url is not None:
            if not policy.direct_references:
                return False
        elif not any(spec.operator == "==" for spec in requirement.specifier):
            return False
        names.add(canonicalize_name(requirement.name))
    wanted = {_name(line) for line in steps.missing} - {None}
    return wanted <= names


def write_manifest(directory: Path) -> str:
    """Lists every file under `directory` with its SHA-256 and size (the set's manifest, last)."""
    text = "".join(f"{digest} {size} {path}\n" for path, (digest, size) in sorted(_files(directory).items()))
    _write_atomically(directory / MANIFEST, text)
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


def _write_atomically(path: Path, text: str) -> None:
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


class Installer:
    def __init__(
        self,
        *,
        model_uri: str,
        cache: Path,
        env: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        work: Path | None = None,
        max_cache_bytes: int | None = None,
    ) -> None:
        self.model_uri = model_uri
        self.cache = cache
        self.env = dict(os.environ if env is None else env)
        self.policy = policy or Policy()
        # The pod's own scratch (uv's cache, temporary files): never the shared cache.
        self.work = work if work is not None else cache / "tmp"
        self.max_cache_bytes = max_cache_bytes
        self.hashes: Mapping[str, tuple[str, ...]] = {}

    def ensure(self, model_dir: Path) -> Path | None:
        """Installs what the version needs beyond the image; returns the directory put on sys.path."""
        environment = read_environment(model_dir, self.policy)
        mismatch = python_mismatch(environment.python, (sys.version_info.major, sys.version_info.minor))
        if mismatch:
            raise DependencyError(f"cannot serve {self.model_uri}: {mismatch}")
        installed = image_packages()
        steps = plan(environment.requirements, installed, environment.constraints)
        if not steps.missing:
            log.info("dependencies: the image has every requirement of %s", self.model_uri)
            return None
        self.hashes = environment.hashes
        started = time.monotonic()
        resolved = self._resolve(steps)
        wanted = to_install(resolved, installed)
        target = self._install(wanted, steps.missing) if wanted else None
        if target is not None:
            sys.path.insert(0, str(target))
            importlib.invalidate_caches()
            # Subprocesses a model starts see the same packages. No bytecode is written into the set
            # (the image sets PYTHONDONTWRITEBYTECODE): another pod must import what uv installed.
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(target), os.environ.get("PYTHONPATH")])
            )
            keep_alive(target)
            if self.max_cache_bytes is not None:
                for gone in prune(self.cache, max_bytes=self.max_cache_bytes, keep=target):
                    log.info("dependencies: pruned %s from the cache (over its size bound)", gone.name)
        log.info(
            "dependencies: %s needs %s; installed %d package(s) in %.1f s: %s",
            self.model_uri,
            ", ".join(_label(line) for line in steps.missing),
            len(wanted),
            time.monotonic() - started,
            ", ".join(_label(line) for line in wanted) or "none",
        )
        return target

    def _resolve(self, steps: Plan) -> list[str]:
        """The pinned requirements to install, from the cache or from uv.

        A hit yields exactly what the miss that wrote it did: the miss returns the lines it wrote,
        read back as a hit reads them. And an entry is written only from a resolution that comes
        out the same on every try: the constrained one, or the unconstrained one after uv found the
        constrained one has no solution; any other failure (the index unreachable, a timeout)
        fails this start and caches nothing, so the next start resolves again. An entry that is not
        what uv writes under this policy (a pin missing, a URL) is resolved again."""
        settings = resolution_settings(self.env)
        key = _key(steps.missing, steps.constraints, steps.model_constraints, settings, self._flags())
        saved = self.cache / "resolved" / f"{key}.txt"
        if saved.is_file():
            lines = resolution_lines(saved.read_text())
            if acceptable_resolution(lines, steps, self.policy):
                _touch(saved)
                return lines
            log.warning(
                "dependencies: the cached resolution %s is not one uv writes; resolving again", saved.name
            )
        with tempfile.TemporaryDirectory(dir=self._work()) as work:
            requirements = Path(work, "requirements.in")
            requirements.write_text("\n".join(steps.missing) + "\n")
            constraints = Path(work, "constraints.txt")
            constraints.write_text("\n".join([*steps.model_constraints, *steps.constraints]) + "\n")
            only_model = Path(work, "model-constraints.txt")
            only_model.write_text("\n".join(steps.model_constraints) + "\n")
            try:
                # The image's versions first; when a recorded pin forbids them (transitively), the
                # model's pins win and the packages it needs shadow the image's.
                output = self._run(
                    [*COMPILE, str(requirements), "-c", str(constraints), *self._flags()], steps.missing
                )
            except NoSolution:
                log.info(
                    "dependencies: %s cannot keep the image's versions; resolving without them",
                    self.model_uri,
                )
                output = self._run(
                    [*COMPILE, str(requirements), "-c", str(only_model), *self._flags()], steps.missing
                )
        text = resolution_text(resolution_lines(output))
        _write_atomically(saved, text)
        return resolution_lines(text)

    def _install(self, wanted: Sequence[str], missing: Sequence[str]) -> Path:
        lines = with_hashes(wanted, self.hashes)
        target = self.cache / "envs" / _key(lines, resolution_settings(self.env), self._flags())
        if target.exists():  # a set is renamed into place whole, its manifest in it
            differs = verify_manifest(target)
            if differs is None:
                _touch(target / MANIFEST)
                log.info("dependencies: found in the cache (%s), its files as installed", target.name)
                return target
            # Changed after it was installed (a pod writing into it, a partial copy): moved aside
            # whole, so a pod importing from it keeps its open files, and installed again.
            log.warning(
                "dependencies: the cached set %s does not match its manifest (%s)", target.name, differs
            )
            aside = target.with_name(f".{target.name}-bad-{os.getpid()}-{time.monotonic_ns()}")
            with contextlib.suppress(OSError):
                target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Installed beside, then renamed: a pod that dies half-way, or another pod of the node
        # installing the same set, never leaves a partial directory under the key.
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            with tempfile.TemporaryDirectory(dir=self._work()) as work:
                requirements = Path(work, "requirements.txt")
                requirements.write_text("\n".join(lines) + "\n")
                self._run(
                    [
                        *("pip", "install", "--no-deps"),
                        *("--target", str(partial), "-r", str(requirements)),
                        *self._flags(),
                    ],
                    missing,
                )
            write_manifest(partial)
            try:
                partial.rename(target)
            except OSError:
                if verify_manifest(target) is not None:
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target

    def _flags(self) -> tuple[str, ...]:
        return () if self.policy.source_builds else ("--no-build",)

    def _work(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work

    def _run(self, arguments: list[str], missing: Sequence[str]) -> str:
        command = [_uv(), *arguments, "--python", sys.executable, "--quiet"]
        done = subprocess.run(
            command,
            env=uv_environment(self.env, self._work()),
            cwd=self._work(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout
        said = (done.stderr or done.stdout).strip()
        # uv's own words go to the log only (they may quote a file or a URL); the message is ours.
        log.warning(
            "dependencies: uv %s %s exited with %d:\n%s",
            arguments[0],
            arguments[1],
            done.returncode,
            redact(said, secret_values(self.env)),
        )
        reason, failed = uv_failure(said)
        named = [line for line in missing if _mentioned(_name(line), said)]
        what = ", ".join(_label(line) for line in (named or missing))
        raise failed(
            f"cannot install {what} for {self.model_uri} from {index_description(self.env)}: {reason} "
            "(the pod's log has uv's output)"
        )


# What uv's output says, in the server's words (the first that matches): (pattern, reason, whether
# a resolution that failed so may be tried again without the image's versions).
_UV_FAILURES: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (
        re.compile(r"401 Unauthorized|403 Forbidden|lack of valid authentication", re.IGNORECASE),
        "the index refused access (check the index credentials)",
        False,
    ),
    (
        re.compile(r"Hash mismatch", re.IGNORECASE),
        "a downloaded file does not match the hash the model gives for it",
        False,
    ),
    (
        re.compile(r"has no usable wheels|building from source is disabled", re.IGNORECASE),
        "only a source distribution fits and builds are off (wheels only; the operator allows "
        "builds with ALIASROLL_DEPENDENCY_SOURCE_BUILDS)",
        True,
    ),
    (re.compile(r"was not found in the package registry", re.IGNORECASE), "the index does not have it", True),
    (
        re.compile(r"there is no version of|no versions of", re.IGNORECASE),
        "the index has no version that fits",
        True,
    ),
    (re.compile(re.escape(NO_SOLUTION), re.IGNORECASE), "the requirements cannot be resolved together", True),
    (
        re.compile(
            r"Failed to fetch|error sending request|Request failed after|Connection refused|timed out|"
            r"dns error|failed to lookup address|Could not connect",
            re.IGNORECASE,
        ),
        "the index cannot be reached",
        False,
    ),
)


def uv_failure(said: str) -> tuple[str, type[DependencyError]]:
    """What a failed uv run means, in fixed words, and whether it is a resolution with no solution
    (NoSolution: tried again without the image's versions) or a failure to reach or read the index."""
    no_solution = NO_SOLUTION.lower() in said.lower()
    for pattern, reason, retry in _UV_FAILURES:
        if pattern.search(said):
            return reason, NoSolution if retry and no_solution else DependencyError
    return "uv failed", DependencyError


def _mentioned(name: str | None, said: str) -> bool:
    if not name:
        return False
    return re.search(rf"(?<![a-z0-9._-]){re.escape(name)}(?![a-z0-9_-])", said.lower()) is not None


def _label(line: str) -> str:
    """A requirement as messages show it: its normalised name, and the version it pins if exact."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return "a direct reference"
    name = canonicalize_name(requirement.name)
    for spec in requirement.specifier:
        if spec.operator == "==" and "*" not in spec.version:
            try:
                return f"{name}=={Version(spec.version)}"
            except InvalidVersion:
                break
    return name


def _name(line: str) -> str | None:
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: its sets are never pruned by this pod
        os.utime(path)
