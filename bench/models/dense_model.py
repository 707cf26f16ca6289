"""A heavier NumPy model for the serving benchmark: hashed bag-of-words into three dense layers.

Logged as "models from code": weights come from a fixed seed at load time (12 MB of float32), so the
model needs no artifact, and each prediction costs real matrix work (three 1024x1024 layers a row).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

WIDTH = 1024
LAYERS = 3
_WORD = re.compile(r"[a-z0-9']+")


class DenseModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        rng = np.random.default_rng(7)
        scale = 1.0 / np.sqrt(WIDTH)
        self.layers = [
            (rng.standard_normal((WIDTH, WIDTH)) * scale).astype(np.float32) for _ in range(LAYERS)
        ]
        self.head = (rng.standard_normal(WIDTH) * scale).astype(np.float32)

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[float]:
        texts = [str(value) for value in model_input.iloc[:, 0]]
        features = np.zeros((len(texts), WIDTH), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                features[row, zlib.crc32(word.encode()) % WIDTH] += 1.0
        hidden = features
        for layer in self.layers:
            hidden = np.tanh(hidden @ layer)
        return [float(p) for p in 1.0 / (1.0 + np.exp(-(hidden @ self.head)))]


set_model(DenseModel())
