"""One version everywhere (hack/version.py): the package, the images' tags, the manifests that pin
them, the changelog's newest release; and LICENSE is the license pyproject.toml declares."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "hack"))
import version  # noqa: E402


@pytest.mark.parametrize("place", version.PLACES, ids=lambda place: place.path)
def test_every_place_states_the_package_version(place: version.Place) -> None:
    found = place.read()
    assert found, f"{place.path}: no version where hack/version.py looks ({place.pattern})"
    assert set(found) == {version.current()}, f"{place.path} says {found}"


def test_the_version_is_semver() -> None:
    assert version.SEMVER.match(version.current())


def test_the_changelog_has_a_section_for_this_version_or_unreleased_work_above_it() -> None:
    headings = re.findall(r"^## \[([^\]]+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)
    released = [h for h in headings if h != "Unreleased"]
    assert released, "CHANGELOG.md has no release"
    assert released[0] == version.current(), f"the newest release in CHANGELOG.md is {released[0]}"


def test_setting_a_version_changes_every_place_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for place in version.PLACES:
        copy = tmp_path / place.path
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((REPO / place.path).read_text())
    monkeypatch.setattr(version, "REPO", tmp_path)
    was = version.current()
    before = {p.path: (tmp_path / p.path).read_text() for p in version.PLACES}
    assert version.main(["v0.99.1-rc.1"]) == 0
    for place in version.PLACES:
        assert set(place.read()) == {"0.99.1-rc.1"}, place.path
        after = (tmp_path / place.path).read_text()
        assert after.replace("0.99.1-rc.1", was) == before[place.path]
    assert version.main(["1.2"]) == 2


def test_the_license_file_is_the_declared_license() -> None:
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
