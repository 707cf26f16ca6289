"""Fixtures shared by the integration and end-to-end tiers: one real `mlflow server` per session.

Tiers are marked by folder (integration, e2e) so `pytest -m "not e2e"` and the Makefile targets
select them. Component logs are printed when a test fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlflowserver import MlflowServer

TESTS = Path(__file__).resolve().parent
_names = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if tier in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))


# Webhooks may deliver to the operator on loopback (plain http, a private address), and a webhook
# created by a test fires within a second (the server caches its webhook list this long).
WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    # A fixed Fernet key: the webhook secrets stored stay readable across restarts of the server.
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg=",
}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow"), extra_env=WEBHOOK_SERVER_ENV) as server:
        yield server


@pytest.fixture
def registry(mlflow_server: MlflowServer) -> MlflowClient:
    if not mlflow_server.is_running():
        mlflow_server.start()  # a test that stopped it failed before bringing it back
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name no other test uses."""
    return f"{request.node.name.split('[')[0]}-{next(_names)}".replace("_", "-")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and "mlflow_server" in getattr(item, "funcargs", {}):
        server: MlflowServer = item.funcargs["mlflow_server"]  # type: ignore[attr-defined]
        report.sections.append(("mlflow server log (tail)", server.log_tail(30)))
    return report
