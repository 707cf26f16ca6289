"""A threshold classifier for the holdout gate's tests: predicts 1 where column "x" is above its
threshold (model_config "threshold"), or, given a "scale", regresses "x" times it; fails to load when
model_config says "fail_to_load", raises in predict on "fail_to_predict", and sleeps model_config
"sleep" seconds per predict call.

Logged as a model from code by tests/integration/test_gate_job.py.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext


class ThresholdModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config or {}
        if config.get("fail_to_load"):
            raise RuntimeError("this version cannot load (fail_to_load)")
        self.threshold = float(config.get("threshold", 0.5))
        self.sleep = float(config.get("sleep", 0))
        self.scale = config.get("scale")
        self.fail_to_predict = bool(config.get("fail_to_predict"))

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[int] | list[float]:
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail_to_predict:
            raise ValueError("this version cannot predict (fail_to_predict)")
        if self.scale is not None:
            return [float(value) * float(self.scale) for value in model_input["x"]]
        return [int(value > self.threshold) for value in model_input["x"]]


set_model(ThresholdModel())
