"""What a model version needs beyond the image, installed at start with uv into scratch.

MLflow records a version's environment beside the model: the Python it was logged under
(python_env.yaml) and its pinned requirements (requirements.txt). Before the model loads:
1. a Python of another minor than the image's cannot be honoured: the version fails to start;
2. requirements the image already satisfies are left alone (the fast path: nothing is resolved);
3. otherwise uv resolves them, preferring the versions the image has (so numpy, pandas and the
   server's own packages are not installed twice), and installs only the difference with
   `uv pip install --target` into a directory put first on sys.path.

The index is the pod's: uv reads UV_INDEX_URL / UV_DEFAULT_INDEX / UV_FIND_LINKS itself, and pip's
PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT are passed on when uv's own are not set.
With a cache directory (ALIASROLL_DEPENDENCY_CACHE, a volume the pods of a node share), the
resolution is kept under a key of the logged requirements, the image and the index settings, and the
installed packages under a key of the resolved set and the index settings: a second pod of the same
version neither resolves nor downloads. What a hit yields is exactly what the miss that wrote it
yielded (the same requirement lines, so the same installed set); an entry is only ever written from
a resolution that would come out the same again (see `Installer._resolve`).
"""

from __future__ import annotations

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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

log = logging.getLogger("aliasroll.serving")

# The server itself provides MLflow (as mlflow-skinny): a logged `mlflow==x` must not pull the full
# tracking server into the pod.
PROVIDED_BY_SERVER = frozenset({"mlflow", "mlflow-skinny"})
COMPLETE = ".complete"
COMPILE = ("pip", "compile", "--no-header", "--no-annotate")
# Kubernetes keeps at most 4096 bytes of a termination message; uv's explanation fits in this.
MAX_UV_OUTPUT = 1500
# Part of every cache key: entries of another format are never read. 2: keys cover the index
# settings; a resolution file is read line by line (format 1 split it on whitespace, and could hold
# an unconstrained resolution written after a transient failure of the constrained one).
CACHE_FORMAT = 2
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
    "UV_NO_BINARY",
    "UV_NO_BUILD",
)
# How uv says a resolution has no solution (a recorded pin against the image's versions), as opposed
# to failing to reach or read the index.
NO_SOLUTION = "No solution found when resolving dependencies"


class DependencyError(Exception):
    """The version's environment cannot be honoured by this image and index; the message says what."""


class NoSolution(DependencyError):
    """uv found the requirements cannot be resolved together (not that the index failed)."""


@dataclass(frozen=True)
class ModelEnvironment:
    python: str | None  # "3.11.7", as MLflow recorded it
    requirements: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """What must happen before the model loads."""

    missing: tuple[str, ...]  # the logged requirements the image does not satisfy
    constraints: tuple[str, ...]  # the image's packages, pinned, that the resolution must keep


def read_environment(model_dir: Path) -> ModelEnvironment:
    """The Python and requirements MLflow logged with the version (MLmodel, python_env.yaml)."""
    flavor: Mapping[str, object] = {}
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
        flavor = flavors.get("python_function") or {}
    env_files = flavor.get("env")
    env_name = env_files.get("virtualenv") if isinstance(env_files, Mapping) else None
    python_env = model_dir / str(env_name or "python_env.yaml")
    python = flavor.get("python_version")
    lines: list[str] = []
    if python_env.is_file():
        recorded = yaml.safe_load(python_env.read_text()) or {}
        python = recorded.get("python") or python
        lines = _expand([str(line) for line in recorded.get("dependencies") or []], model_dir)
    elif (model_dir / "requirements.txt").is_file():
        lines = _expand(["-r requirements.txt"], model_dir)
    return ModelEnvironment(python=str(python) if python else None, requirements=tuple(lines))


def _expand(lines: Iterable[str], base: Path) -> list[str]:
    out: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = base / line.split(None, 1)[1].strip()
            out.extend(_expand(included.read_text().splitlines(), included.parent))
        elif line.startswith("-"):
            continue  # pip options (--index-url, ...): where packages come from is the cluster's choice
        else:
            out.append(line)
    return out


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
        f"the model was logged under Python {logged} and the serving image runs Python "
        f"{running[0]}.{running[1]}: log the model again under Python {running[0]}.{running[1]}, or serve "
        f"it from an image of Python {version.major}.{version.minor} with spec.serving.dependencies: image"
    )


def plan(requirements: Sequence[str], installed: Mapping[str, str]) -> Plan:
    """Which logged requirements the image lacks, and the image's pins the resolution keeps.

    `installed` maps canonical names to versions. A requirement the image satisfies is not
    reinstalled; one it satisfies at another version (a pin MLflow recorded) is, and the image's
    version of that package is then not a constraint. Lines that are not plain requirements
    (a URL, a wheel path) are left to uv.
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
    constraints = tuple(
        f"{name}=={version}" for name, version in sorted(installed.items()) if name not in unpinned
    )
    return Plan(missing=tuple(missing), constraints=constraints if missing else ())


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


def uv_environment(env: Mapping[str, str], cache: Path) -> dict[str, str]:
    """uv's environment: pip's settings carried over where uv's own are not set."""
    out = _with_pip_settings(env)
    out.update(
        UV_CACHE_DIR=str(cache / "uv"),
        UV_PYTHON_DOWNLOADS="never",  # the image's interpreter or nothing
        UV_NO_PROGRESS="1",
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


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


class Installer:
    def __init__(self, *, model_uri: str, cache: Path, env: Mapping[str, str] | None = None) -> None:
        self.model_uri = model_uri
        self.cache = cache
        self.env = dict(os.environ if env is None else env)

    def ensure(self, model_dir: Path) -> Path | None:
        """Installs what the version needs beyond the image; returns the directory put on sys.path."""
        environment = read_environment(model_dir)
        mismatch = python_mismatch(environment.python, (sys.version_info.major, sys.version_info.minor))
        if mismatch:
            raise DependencyError(f"cannot serve {self.model_uri}: {mismatch}")
        installed = image_packages()
        steps = plan(environment.requirements, installed)
        if not steps.missing:
            log.info("dependencies: the image has every requirement of %s", self.model_uri)
            return None
        started = time.monotonic()
        resolved = self._resolve(steps)
        wanted = to_install(resolved, installed)
        target = self._install(wanted, steps.missing) if wanted else None
        if target is not None:
            sys.path.insert(0, str(target))
            importlib.invalidate_caches()
            # The image sets PYTHONDONTWRITEBYTECODE; the installed packages are not compiled ahead
            # (all of scipy takes longer than importing the part a model uses). The modules this
            # process imports are compiled anyway: written beside their source (atomically, so pods
            # sharing the cache never read half a file), a later pod imports them at a custom
            # image's speed. Writes into the read-only image fail quietly, as importlib's do.
            sys.dont_write_bytecode = False
            # Subprocesses a model starts see the same packages.
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(target), os.environ.get("PYTHONPATH")])
            )
        log.info(
            "dependencies: %s needs %s; installed %d package(s) in %.1f s: %s",
            self.model_uri,
            ", ".join(steps.missing),
            len(wanted),
            time.monotonic() - started,
            ", ".join(wanted) or "none",
        )
        return target

    def _resolve(self, steps: Plan) -> list[str]:
        """The pinned requirements to install, from the cache or from uv.

        A hit yields exactly what the miss that wrote it did: the miss returns the lines it wrote,
        read back as a hit reads them. And an entry is written only from a resolution that comes
        out the same on every try: the constrained one, or the unconstrained one after uv found the
        constrained one has no solution; any other failure (the index unreachable, a timeout)
        fails this start and caches nothing, so the next start resolves again."""
        settings = resolution_settings(self.env)
        saved = self.cache / "resolved" / f"{_key(steps.missing, steps.constraints, settings)}.txt"
        if saved.is_file():
            return resolution_lines(saved.read_text())
        with tempfile.TemporaryDirectory(dir=self._work()) as work:
            requirements = Path(work, "requirements.in")
            requirements.write_text("\n".join(steps.missing) + "\n")
            constraints = Path(work, "constraints.txt")
            constraints.write_text("\n".join(steps.constraints) + "\n")
            try:
                # The image's versions first; when a recorded pin forbids them (transitively), the
                # model's pins win and the packages it needs shadow the image's.
                output = self._run([*COMPILE, str(requirements), "-c", str(constraints)], steps.missing)
            except NoSolution:
                log.info(
                    "dependencies: %s cannot keep the image's versions; resolving without them",
                    self.model_uri,
                )
                output = self._run([*COMPILE, str(requirements)], steps.missing)
        text = resolution_text(resolution_lines(output))
        _write_atomically(saved, text)
        return resolution_lines(text)

    def _install(self, wanted: Sequence[str], missing: Sequence[str]) -> Path:
        target = self.cache / "envs" / _key(wanted, resolution_settings(self.env))
        if (target / COMPLETE).exists():
            log.info("dependencies: found in the cache (%s)", target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Installed beside, then renamed: a pod that dies half-way, or another pod of the node
        # installing the same set, never leaves a partial directory under the key.
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            requirements = partial / ".requirements.txt"
            requirements.write_text("\n".join(wanted) + "\n")
            self._run(
                [
                    *("pip", "install", "--no-deps"),
                    *("--target", str(partial), "-r", str(requirements)),
                ],
                missing,
            )
            (partial / COMPLETE).write_text("\n".join(wanted) + "\n")
            try:
                partial.rename(target)
            except OSError:
                if not (target / COMPLETE).exists():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target

    def _work(self) -> Path:
        work = self.cache / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        return work

    def _run(self, arguments: list[str], missing: Sequence[str]) -> str:
        command = [_uv(), *arguments, "--python", sys.executable, "--quiet"]
        done = subprocess.run(
            command, env=uv_environment(self.env, self.cache), capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return done.stdout
        said = (done.stderr or done.stdout).strip()
        named = [line for line in missing if (_name(line) or "\0") in said.lower()]
        what = ", ".join(named or missing)
        failed = NoSolution if NO_SOLUTION.lower() in said.lower() else DependencyError
        raise failed(
            f"cannot install {what} for {self.model_uri} from {index_description(self.env)}: "
            f"uv {arguments[0]} {arguments[1]} failed: {said[-MAX_UV_OUTPUT:]}"
        )


def _name(line: str) -> str | None:
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None
