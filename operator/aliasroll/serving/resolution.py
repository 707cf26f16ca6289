"""What to install before a version loads, and the settings uv resolves it with.

Requirements the image already satisfies are left alone (the fast path: nothing is resolved, `plan`);
otherwise uv resolves them, preferring the versions the image has (so numpy, pandas and the server's
own packages are not installed twice), and only the difference is installed (`to_install`), with the
hashes the model gives (`with_hashes`).

The index is the pod's: uv reads UV_INDEX_URL / UV_DEFAULT_INDEX / UV_FIND_LINKS itself, and pip's
PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT are passed on when uv's own are not set. uv gets only
those settings, the CA bundle and the proxies: never the registry's credentials or the rest of the pod's
environment (`uv_environment`). A cached resolution is used only when every line is a pin the policy
accepts (`acceptable_resolution`).
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from aliasroll.serving.requirements import Policy, requirement_name

# The server itself provides MLflow (as mlflow-skinny): a logged `mlflow==x` must not pull the full
# tracking server into the pod.
PROVIDED_BY_SERVER = frozenset({"mlflow", "mlflow-skinny"})
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


@dataclass(frozen=True)
class Plan:
    """What must happen before the model loads."""

    missing: tuple[str, ...]  # the logged requirements the image does not satisfy
    constraints: tuple[str, ...]  # the image's packages, pinned, that the resolution must keep
    model_constraints: tuple[str, ...] = ()  # the model's own constraints, always kept


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
    kept = tuple(line for line in constraints if requirement_name(line) not in PROVIDED_BY_SERVER)
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
        given = hashes.get(requirement_name(line) or "")
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
    wanted = {requirement_name(line) for line in steps.missing} - {None}
    return wanted <= names
