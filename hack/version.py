"""The project's one version, and every place that states it.

aliasroll has one version (SemVer): the Python package, both images' tags and the manifests that pin
them move together, so `kubectl apply -k manifests/` at a tag runs the images built from that tag.
The API version (v1alpha1) moves on its own, by the Kubernetes API conventions.

    python hack/version.py            prints the version
    python hack/version.py 0.2.0      sets it everywhere (then add its section to CHANGELOG.md)

tests/unit/artifacts/test_versions.py fails when any place disagrees with operator/aliasroll/__init__.py.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class Place:
    """A file and a pattern whose group `v` is the version."""

    path: str
    pattern: str

    def _regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.M)

    def read(self) -> list[str]:
        return [m.group("v") for m in self._regex().finditer((REPO / self.path).read_text())]

    def write(self, version: str) -> None:
        path = REPO / self.path
        text = path.read_text()

        def swap(match: re.Match[str]) -> str:
            start, end = match.span("v")
            return match.group(0)[: start - match.start()] + version + match.group(0)[end - match.start() :]

        path.write_text(self._regex().sub(swap, text))


V = r"(?P<v>[0-9][0-9A-Za-z.-]*)"
PLACES = (
    Place("operator/aliasroll/__init__.py", rf'^__version__ = "{V}"'),
    Place("pyproject.toml", rf'^version = "{V}"'),
    Place("uv.lock", rf'^name = "aliasroll"\nversion = "{V}"'),
    Place("manifests/kustomization.yaml", rf"^\s+newTag: {V}$"),
    Place("manifests/operator.yaml", rf"ghcr\.io/aliasroll/(?:operator|serving):{V}$"),
    Place("operator/aliasroll/planning/workloads.py", rf'"ghcr\.io/aliasroll/serving:{V}"'),
    Place("operator/Dockerfile", rf"ghcr\.io/aliasroll/operator:{V} \."),
    Place("serving-image/Dockerfile", rf"ghcr\.io/aliasroll/serving:{V} \."),
    Place("serving-image/README.md", rf"ghcr\.io/aliasroll/serving:{V} \."),
)
SOURCE = PLACES[0]


def current() -> str:
    [version] = SOURCE.read()
    return version


def main(argv: list[str]) -> int:
    if not argv:
        print(current())
        return 0
    version = argv[0].removeprefix("v")
    if not SEMVER.match(version):
        print(f"{argv[0]!r} is not a SemVer version (MAJOR.MINOR.PATCH[-PRERELEASE])", file=sys.stderr)
        return 2
    for place in PLACES:
        place.write(version)
    print(f"version {version} set in {len(PLACES)} files; CHANGELOG.md needs its section")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
