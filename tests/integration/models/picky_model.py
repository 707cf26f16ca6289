"""A test model with a temper: it raises on the word "boom", raises quoting the registry token on
"leak", takes N seconds on "sleep N" (saying so in the log), and fails to load when told to.

Logged as models from code by tests/integration/test_serving.py.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext


class PickyModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        if os.environ.get("PICKY_MODEL_FAIL_TO_LOAD"):
            raise RuntimeError("this version cannot load (PICKY_MODEL_FAIL_TO_LOAD is set)")

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[int]:
        texts = [str(value) for value in model_input.iloc[:, 0]]
        if "boom" in texts:
            raise ValueError("the model does not take 'boom'")
        if "leak" in texts:
            token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
            raise ConnectionError(f"cannot reach https://scorer:{token}@features.internal (token {token})")
        for text in texts:
            if text.startswith("sleep "):
                logging.getLogger("picky").warning("picky model: sleeping on %r", text)
                time.sleep(float(text.removeprefix("sleep ")))
        return [len(text) for text in texts]


set_model(PickyModel())
