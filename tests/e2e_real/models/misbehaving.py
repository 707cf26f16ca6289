"""A pyfunc model that answers like a healthy one but misbehaves as its model_config says: raise on a
share of requests (`fail_share`, 0 to 1), or answer `delay_seconds` later. A canary of it must be
caught by the analysis while production's answers stay healthy."""

from __future__ import annotations

import random
import time
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class Misbehaving(PythonModel):  # type: ignore[misc]
    def load_context(self, context: Any) -> None:
        config = context.model_config or {}
        self.fail_share = float(config.get("fail_share", 0))
        self.delay_seconds = float(config.get("delay_seconds", 0))

    def predict(
        self, context: Any, model_input: list[str], params: dict[str, Any] | None = None
    ) -> list[float]:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if random.random() < self.fail_share:
            raise RuntimeError("this model fails on a share of requests (on purpose, for the tests)")
        return [0.5 for _ in model_input]


mlflow.models.set_model(Misbehaving())
