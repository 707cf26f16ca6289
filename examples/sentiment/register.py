"""Train the example sentiment model and register it as a new version in an MLflow model registry.

    python -m examples.sentiment.register --tracking-uri http://127.0.0.1:5000 --alias production

Each call trains (milliseconds), logs the model as "models from code" and registers a NEW version.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

try:
    from examples.sentiment import model as sentiment
except ModuleNotFoundError as error:
    # Run as a file (python examples/sentiment/register.py): only this directory is on sys.path.
    # Import model.py by its package path anyway, so it is one module however register.py is used.
    if error.name != "examples":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from examples.sentiment import model as sentiment

HERE = Path(__file__).resolve().parent
MODEL_CODE = HERE / "model.py"
DATASET = HERE / "data.csv"
EXPERIMENT = "aliasroll-examples"
VARIANT_TAG = "variant"

# Given explicitly so MLflow doesn't infer them (slow: it loads the model in a subprocess) and
# so serving installs no more than the model needs. mlflow-skinny is enough to load a pyfunc.
PIP_REQUIREMENTS = [
    f"mlflow-skinny=={mlflow.__version__}",
    f"numpy=={np.__version__}",
    f"pandas=={pd.__version__}",
]

# One string column in, one probability per text out. The column is deliberately unnamed: a named
# "text" column makes pyfunc reject a plain list of strings. DataFrames with a "text" column, dicts
# {"text": [...]} and lists all pass, and so do the served dataframe_records/dataframe_split/instances
# forms and {"inputs": [...]}; only {"inputs": {"text": [...]}} is refused by the scoring server.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("double")]),
)
# Without an example MLflow warns (UserWarning) even with a signature. A list, not a DataFrame with
# named columns: MLflow 3.17 compares those columns to a range(), a Pandas4Warning under pandas 3.
INPUT_EXAMPLE = ["this is great", "this is terrible"]


def epochs_for(variant: str | None) -> int:
    """Training epochs for a variant: each label gets its own (deterministic) epoch count, so versions
    of different variants give slightly different scores that a test can tell apart."""
    if variant is None:
        return sentiment.DEFAULT_EPOCHS
    # crc32, not hash(): str hashes are salted per process.
    return sentiment.DEFAULT_EPOCHS + 1 + zlib.crc32(variant.encode()) % 200


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        # Another caller created it between our get and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def register_version(
    tracking_uri: str,
    model_name: str = "sentiment",
    *,
    variant: str | None = None,
    alias: str | None = None,
) -> str:
    """Train, log and register a new version of ``model_name``; point ``alias`` at it if given.

    ``variant`` is recorded as the version's ``variant`` tag and picks the training epochs (see
    ``epochs_for``). Sets mlflow's process-wide tracking URI to ``tracking_uri``: ``log_model`` only
    exists in the fluent API. Returns the new version number as a string, e.g. ``"3"``.
    """
    texts, labels = sentiment.load_dataset(DATASET)
    weights = sentiment.train(texts, labels, epochs=epochs_for(variant), label=variant or "")

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="sentiment-") as tmp:
        weights_path = Path(tmp) / "weights.npz"
        weights.save(weights_path)
        with mlflow.start_run(experiment_id=_experiment_id(client, EXPERIMENT)):
            mlflow.log_params({"epochs": epochs_for(variant), "variant": variant or ""})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={sentiment.WEIGHTS_ARTIFACT: str(weights_path)},
                signature=SIGNATURE,
                input_example=INPUT_EXAMPLE,
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=model_name,
            )
    version = str(info.registered_model_version)
    if variant is not None:
        client.set_model_version_tag(model_name, version, VARIANT_TAG, variant)
    if alias is not None:
        client.set_registered_model_alias(model_name, alias, version)
    return version


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracking-uri", required=True, help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--model-name", default="sentiment")
    parser.add_argument("--variant", help="label recorded as the version's 'variant' tag")
    parser.add_argument("--alias", help="alias to point at the new version, e.g. production")
    args = parser.parse_args(argv)
    # MLflow prints "View run ..." links to stdout: send them to stderr so stdout is just the version.
    with contextlib.redirect_stdout(sys.stderr):
        version = register_version(args.tracking_uri, args.model_name, variant=args.variant, alias=args.alias)
    print(version)


if __name__ == "__main__":
    main()
