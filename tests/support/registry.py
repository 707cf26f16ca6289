"""Registry helpers for tests: quick versions that record only a source (no model logged)."""

from __future__ import annotations

from mlflow import MlflowClient


def quick_versions(client: MlflowClient, name: str, count: int, *, create: bool = True) -> list[str]:
    """Registers `count` new versions of `name` (creating the model first when `create`)."""
    if create:
        client.create_registered_model(name)
    return [
        str(client.create_model_version(name, source=f"s3://models/{name}/{index}").version)
        for index in range(count)
    ]
