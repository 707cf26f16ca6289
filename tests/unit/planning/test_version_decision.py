"""Which version each track runs (planning/version_decision.py), as tables of named cases: production
follows its alias only to a READY version and keeps what serves on any failure; the canary does the
same, except that its alias's removal (or weight 0) ends it and a canary on production's version is
none; a move to a lower version number is a rollback."""

from __future__ import annotations

import pytest
from builders import canary_spec, spec, view

from aliasroll import reasons
from aliasroll.errors import ModelNotFound, RegistryUnavailable
from aliasroll.planning.state import RegistryView, ServedVersion
from aliasroll.planning.version_decision import (
    Problem,
    TrackDecision,
    decide_canary,
    decide_production,
    is_rollback,
)
from aliasroll.spec import ModelDeploymentSpec


def served(version: str, model: str = "sentiment") -> ServedVersion:
    return ServedVersion(model=model, version=version, run_id=f"run-{version}")


STEPPED = spec(canary={"alias": "canary", "steps": [{"weight": 10, "duration": "1m"}]})
RENAMED = spec(model={"name": "fraud", "alias": "production"})
CHAMPION = spec(model={"name": "sentiment", "alias": "champion"})
CHALLENGER = spec(canary={"alias": "challenger", "weight": 20})
RENAMED_CANARY = spec(
    model={"name": "fraud", "alias": "production"}, canary={"alias": "canary", "weight": 20}
)
DOWN = RegistryUnavailable("the registry at http://mlflow:5000 did not answer")


PRODUCTION = [
    pytest.param(
        spec(),
        view("2"),
        None,
        TrackDecision(target=served("2"), pointed_at="2"),
        id="an alias on a READY version is followed on a first deploy",
    ),
    pytest.param(
        spec(),
        view("3"),
        served("2"),
        TrackDecision(target=served("3"), pointed_at="3"),
        id="an alias that moves rolls production to the version it names",
    ),
    pytest.param(
        spec(),
        view("1"),
        served("2"),
        TrackDecision(target=served("1"), pointed_at="1"),
        id="an alias that moves back is followed like any move",
    ),
    pytest.param(
        spec(),
        view("2"),
        served("2"),
        TrackDecision(target=served("2"), pointed_at="2"),
        id="an alias that stays keeps production where it is",
    ),
    pytest.param(
        spec(),
        view(None),
        served("2"),
        TrackDecision(
            target=served("2"),
            problem=Problem(
                reasons.ALIAS_NOT_FOUND, "model 'sentiment' has no alias @production; version 2 keeps serving"
            ),
        ),
        id="an alias that disappears never changes what serves production",
    ),
    pytest.param(
        spec(),
        RegistryView(model="sentiment"),
        served("2"),
        TrackDecision(
            target=served("2"),
            problem=Problem(
                reasons.ALIAS_NOT_FOUND, "model 'sentiment' has no alias @production; version 2 keeps serving"
            ),
        ),
        id="an answer that names no production alias at all is an alias not found",
    ),
    pytest.param(
        spec(),
        view(None),
        None,
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.ALIAS_NOT_FOUND,
                "model 'sentiment' has no alias @production; nothing is deployed until it is fixed",
            ),
        ),
        id="an alias not set on a first deploy deploys nothing until it is fixed",
    ),
    pytest.param(
        spec(),
        view("7", missing=("7",)),
        served("2"),
        TrackDecision(
            target=served("2"),
            problem=Problem(
                reasons.VERSION_NOT_FOUND,
                "@production points at version 7 of 'sentiment', which does not exist; "
                "version 2 keeps serving",
            ),
            pointed_at="7",
        ),
        id="an alias on a missing version never changes what serves production",
    ),
    pytest.param(
        spec(),
        view("3", not_ready=("3",)),
        served("2"),
        TrackDecision(
            target=served("2"),
            problem=Problem(
                reasons.VERSION_NOT_READY,
                "@production points at version 3 of 'sentiment', which is PENDING_REGISTRATION, not READY; "
                "version 2 keeps serving",
            ),
            pointed_at="3",
        ),
        id="an alias on a version not READY never changes what serves production",
    ),
    pytest.param(
        spec(),
        view("3", not_ready=("3",)),
        None,
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.VERSION_NOT_READY,
                "@production points at version 3 of 'sentiment', which is PENDING_REGISTRATION, not READY; "
                "nothing is deployed until it is fixed",
            ),
            pointed_at="3",
        ),
        id="an alias on a version not READY on a first deploy deploys nothing",
    ),
    pytest.param(
        spec(),
        view(error=DOWN),
        served("2"),
        TrackDecision(
            target=served("2"),
            problem=Problem(
                reasons.REGISTRY_UNREACHABLE,
                "the registry at http://mlflow:5000 did not answer; version 2 keeps serving",
            ),
        ),
        id="a registry that fails never changes what serves production",
    ),
    pytest.param(
        spec(),
        view(error=ModelNotFound("the registry has no registered model 'sentiment'")),
        None,
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.MODEL_NOT_FOUND,
                "the registry has no registered model 'sentiment'; nothing is deployed until it is fixed",
            ),
        ),
        id="a registry error on a first deploy deploys nothing and carries the error's reason",
    ),
    pytest.param(
        RENAMED,
        view("3", model="fraud"),
        served("3"),
        TrackDecision(target=served("3", model="fraud"), pointed_at="3"),
        id="a renamed model rolls production to the new model's version, even at the same number",
    ),
    pytest.param(
        RENAMED,
        view(None, model="fraud"),
        served("3"),
        TrackDecision(
            target=served("3"),
            problem=Problem(
                reasons.ALIAS_NOT_FOUND, "model 'fraud' has no alias @production; version 3 keeps serving"
            ),
        ),
        id="a renamed model without the alias keeps the old model's version serving",
    ),
    pytest.param(
        CHAMPION,
        view(None),
        served("2"),
        TrackDecision(
            target=served("2"),
            problem=Problem(
                reasons.ALIAS_NOT_FOUND, "model 'sentiment' has no alias @champion; version 2 keeps serving"
            ),
        ),
        id="the message names the alias spec.model.alias names",
    ),
]


@pytest.mark.parametrize(("the_spec", "the_view", "current", "expected"), PRODUCTION)
def test_production_follows_its_alias_only_to_a_ready_version(
    the_spec: ModelDeploymentSpec,
    the_view: RegistryView,
    current: ServedVersion | None,
    expected: TrackDecision,
) -> None:
    assert decide_production(spec=the_spec, view=the_view, current=current) == expected


CANARY = [
    pytest.param(
        spec(),
        view("2", "3"),
        None,
        served("2"),
        TrackDecision(target=None),
        id="without spec.canary there is no canary, whatever @canary says",
    ),
    pytest.param(
        canary_spec(0),
        view("2", "3"),
        served("3"),
        served("2"),
        TrackDecision(target=None),
        id="a canary weight of 0 ends the canary",
    ),
    pytest.param(
        canary_spec(20),
        view("2", "3"),
        None,
        None,
        TrackDecision(target=None),
        id="without a production version there is no canary",
    ),
    pytest.param(
        STEPPED,
        view("2", "3"),
        None,
        served("2"),
        TrackDecision(target=served("3"), pointed_at="3"),
        id="a stepped canary is wanted though it sets no weight",
    ),
    pytest.param(
        canary_spec(20),
        view("2", "3"),
        None,
        served("2"),
        TrackDecision(target=served("3"), pointed_at="3"),
        id="a canary alias on a READY version starts the canary",
    ),
    pytest.param(
        canary_spec(20),
        view("2", "4"),
        served("3"),
        served("2"),
        TrackDecision(target=served("4"), pointed_at="4"),
        id="a canary alias that moves rolls the canary to the version it names",
    ),
    pytest.param(
        canary_spec(20),
        view("2", None),
        served("3"),
        served("2"),
        TrackDecision(target=None),
        id="removing the canary alias ends the canary, with no problem to report",
    ),
    pytest.param(
        canary_spec(20),
        RegistryView(model="sentiment", production=view("2").production),
        served("3"),
        served("2"),
        TrackDecision(target=None),
        id="an answer that names no canary alias at all ends the canary",
    ),
    pytest.param(
        canary_spec(20),
        view(error=DOWN),
        served("3"),
        served("2"),
        TrackDecision(
            target=served("3"),
            problem=Problem(
                reasons.REGISTRY_UNREACHABLE, "the registry at http://mlflow:5000 did not answer"
            ),
        ),
        id="a registry that fails keeps the canary that runs",
    ),
    pytest.param(
        canary_spec(20),
        view(error=DOWN),
        None,
        served("2"),
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.REGISTRY_UNREACHABLE, "the registry at http://mlflow:5000 did not answer"
            ),
        ),
        id="a registry that fails starts no canary",
    ),
    pytest.param(
        canary_spec(20),
        view("2", "9", missing=("9",)),
        served("3"),
        served("2"),
        TrackDecision(
            target=served("3"),
            problem=Problem(
                reasons.VERSION_NOT_FOUND,
                "@canary points at version 9 of 'sentiment', which does not exist; version 3 keeps serving",
            ),
            pointed_at="9",
        ),
        id="a canary alias on a missing version keeps the canary that runs",
    ),
    pytest.param(
        canary_spec(20),
        view("2", "4", not_ready=("4",)),
        None,
        served("2"),
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.VERSION_NOT_READY,
                "@canary points at version 4 of 'sentiment', which is PENDING_REGISTRATION, not READY; "
                "nothing is deployed until it is fixed",
            ),
            pointed_at="4",
        ),
        id="a canary alias on a version not READY starts no canary until it is",
    ),
    pytest.param(
        canary_spec(20),
        view("3", "3"),
        served("3"),
        served("3"),
        TrackDecision(target=None, pointed_at="3"),
        id="a canary on production's version is no canary: a promotion ends it",
    ),
    pytest.param(
        canary_spec(20),
        view("2", "5", not_ready=("5",)),
        served("2"),
        served("2"),
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.VERSION_NOT_READY,
                "@canary points at version 5 of 'sentiment', which is PENDING_REGISTRATION, not READY; "
                "version 2 keeps serving",
            ),
            pointed_at="5",
        ),
        id="a canary kept on production's version is none, and its alias's problem is still told",
    ),
    pytest.param(
        CHALLENGER,
        view("2", None),
        None,
        served("2"),
        TrackDecision(target=None),
        id="a canary alias of another name that is not set starts no canary",
    ),
    pytest.param(
        CHALLENGER,
        RegistryView(
            model="sentiment",
            production=view("2").production,
            canary=view("2", "6", missing=("6",)).canary,
        ),
        None,
        served("2"),
        TrackDecision(
            target=None,
            problem=Problem(
                reasons.VERSION_NOT_FOUND,
                "@challenger points at version 6 of 'sentiment', which does not exist; "
                "nothing is deployed until it is fixed",
            ),
            pointed_at="6",
        ),
        id="the message names the alias spec.canary.alias names",
    ),
    pytest.param(
        RENAMED_CANARY,
        view("3", "4", model="fraud", not_ready=("3",)),
        None,
        served("3"),
        TrackDecision(target=served("4", model="fraud"), pointed_at="4"),
        id="a renamed model's canary follows its alias while production still serves the old model",
    ),
    pytest.param(
        RENAMED_CANARY,
        view(None, "3", model="fraud"),
        None,
        served("3"),
        TrackDecision(target=served("3", model="fraud"), pointed_at="3"),
        id="a version is the pair (model, number): another model's canary at production's number still runs",
    ),
]


@pytest.mark.parametrize(("the_spec", "the_view", "current", "production", "expected"), CANARY)
def test_the_canary_follows_its_alias_and_ends_when_it_goes(
    the_spec: ModelDeploymentSpec,
    the_view: RegistryView,
    current: ServedVersion | None,
    production: ServedVersion | None,
    expected: TrackDecision,
) -> None:
    decision = decide_canary(spec=the_spec, view=the_view, current=current, production=production)
    assert decision == expected


ROLLBACKS = [
    pytest.param(served("3"), served("2"), True, id="a move to a lower version number is a rollback"),
    pytest.param(served("2"), served("3"), False, id="a move to a higher version number is no rollback"),
    pytest.param(served("2"), served("2"), False, id="staying on a version is no rollback"),
    pytest.param(served("10"), served("9"), True, id="numbers compare as numbers: 10 to 9 is a rollback"),
    pytest.param(served("9"), served("10"), False, id="numbers compare as numbers: 9 to 10 is no rollback"),
    pytest.param(None, served("2"), False, id="a first deploy is no rollback"),
    pytest.param(served("2"), None, False, id="a track that goes is no rollback"),
    pytest.param(None, None, False, id="nothing before and after is no rollback"),
    pytest.param(served("2"), served("v1"), False, id="a version that is not a number is never a rollback"),
]


@pytest.mark.parametrize(("old", "new", "expected"), ROLLBACKS)
def test_a_rollback_is_a_move_to_a_lower_version_number(
    old: ServedVersion | None, new: ServedVersion | None, expected: bool
) -> None:
    assert is_rollback(old, new) is expected
