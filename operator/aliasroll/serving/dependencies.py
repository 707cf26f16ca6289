"""What a model version needs beyond the image, installed at start with uv into scratch.

MLflow records a version's environment beside the model. Before the model loads (`Installer.ensure`):
1. a Python of another minor than the image's cannot be honoured: the version fails to start;
2. the requirement files are read under the operator's policy (serving/requirements.py);
3. requirements the image already satisfies are left alone (the fast path: nothing is resolved);
4. otherwise uv resolves them, preferring the versions the image has, and installs only the difference
   (serving/resolution.py) with `uv pip install --target` into a directory put first on sys.path.
   Wheels only (`--no-build`), unless the operator allows source builds; hashes the model gives are
   checked.

With a cache directory, resolutions and installed sets are shared by a namespace's pods
(serving/dependency_cache.py): a second pod of the same version neither resolves nor downloads.

Messages (the pod's termination message, so the resource's status) name requirements by their
normalised name (and pinned version) and say what failed in fixed words: never a raw line of the
model's files nor uv's output, which goes to the log only, redacted.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from aliasroll.serving.dependency_cache import (
    MANIFEST,
    cache_key,
    keep_alive,
    prune,
    touch,
    verify_manifest,
    write_atomically,
    write_manifest,
)
from aliasroll.serving.redaction import redact, secret_values
from aliasroll.serving.requirements import (
    DependencyError,
    Policy,
    python_mismatch,
    read_environment,
    requirement_name,
)
from aliasroll.serving.resolution import (
    Plan,
    acceptable_resolution,
    image_packages,
    index_description,
    plan,
    resolution_lines,
    resolution_settings,
    resolution_text,
    to_install,
    uv_environment,
    with_hashes,
)

log = logging.getLogger("aliasroll.serving")

COMPILE = ("pip", "compile", "--no-header", "--no-annotate")
# How uv says a resolution has no solution (a recorded pin against the image's versions), as opposed
# to failing to reach or read the index.
NO_SOLUTION = "No solution found when resolving dependencies"


class NoSolution(DependencyError):
    """uv found the requirements cannot be resolved together (not that the index failed)."""


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
        key = cache_key(steps.missing, steps.constraints, steps.model_constraints, settings, self._flags())
        saved = self.cache / "resolved" / f"{key}.txt"
        if saved.is_file():
            lines = resolution_lines(saved.read_text())
            if acceptable_resolution(lines, steps, self.policy):
                touch(saved)
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
        write_atomically(saved, text)
        return resolution_lines(text)

    def _install(self, wanted: Sequence[str], missing: Sequence[str]) -> Path:
        lines = with_hashes(wanted, self.hashes)
        target = self.cache / "envs" / cache_key(lines, resolution_settings(self.env), self._flags())
        if target.exists():  # a set is renamed into place whole, its manifest in it
            differs = verify_manifest(target)
            if differs is None:
                touch(target / MANIFEST)
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
        named = [line for line in missing if _mentioned(requirement_name(line), said)]
        what = ", ".join(_label(line) for line in (named or missing))
        raise failed(
            f"cannot install {what} for {self.model_uri} from {index_description(self.env)}: {reason} "
            "(the pod's log has uv's output)"
        )


def _uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise DependencyError("uv is not installed in the serving image") from None
        return found


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
