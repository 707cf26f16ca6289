"""A pyfunc that needs a package the serving image lacks (aliasroll-probe, from the tests' index)."""

import mlflow


class ProbeModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def load_context(self, context):  # type: ignore[no-untyped-def]
        import aliasroll_probe  # fails to load unless the server installed the version's requirements

        self.version = aliasroll_probe.VERSION

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [f"{self.version}:{x}" for x in model_input["x"]]


mlflow.models.set_model(ProbeModel())
