"""A pyfunc the serving image has every requirement of: the cold-start floor of bench/dependencies.py."""

import mlflow
import numpy as np


class RowSums(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return np.asarray(model_input, dtype=float).sum(axis=1).tolist()


mlflow.models.set_model(RowSums())
