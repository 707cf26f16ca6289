"""A pyfunc model that cannot load: its load_context raises, as a model missing a dependency would."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class Unloadable(PythonModel):  # type: ignore[misc]
    def load_context(self, context: Any) -> None:
        raise RuntimeError("this version cannot load (on purpose, for the tests)")

    def predict(
        self, context: Any, model_input: list[str], params: dict[str, Any] | None = None
    ) -> list[float]:
        return [0.5 for _ in model_input]


mlflow.models.set_model(Unloadable())
