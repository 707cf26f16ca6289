"""A threshold classifier: 1 when x is at or above the threshold its model_config names, else 0.

Two versions logged with thresholds 0.5 and 0.7 disagree exactly on x in [0.5, 0.7): what
tests/integration/test_serving_shadow.py counts. With THRESHOLD_MODEL_SLEEP_SECONDS set, every call
after the first (the warm-up) sleeps that long first: a slow shadow.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext


class ThresholdModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.threshold = float((context.model_config or {}).get("threshold", 0.5))
        self.calls = 0

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[int]:
        self.calls += 1
        delay = float(os.environ.get("THRESHOLD_MODEL_SLEEP_SECONDS") or 0)
        if delay and self.calls > 1:
            time.sleep(delay)
        return [1 if float(x) >= self.threshold else 0 for x in model_input["x"]]


set_model(ThresholdModel())
