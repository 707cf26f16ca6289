"""What a model version declares it needs: the Python and requirements MLflow logged beside it.

MLflow records a version's environment beside the model: the Python it was logged under
(python_env.yaml) and its pinned requirements (requirements.txt). The requirement files are read under
the operator's policy (`Policy`): only `name[extras] specifier ; marker` lines, `-r`/`-c` includes
inside the model directory, and `--hash` options; a direct reference (a URL, a VCS link, a path) only
where the operator allows it. A Python of another minor than the image's cannot be honoured
(`python_mismatch`).

Messages name requirements by their normalised name and say what was refused in fixed words: never a
raw line of the model's files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

log = logging.getLogger("aliasroll.serving")

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


class DependencyError(Exception):
    """The version's environment cannot be honoured by this image and index; the message says what."""


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


def requirement_name(line: str) -> str | None:
    """The canonical name of a requirement line, or None (a direct reference without a name)."""
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None
