"""aliasroll: serve MLflow registered models on Kubernetes by alias."""

__version__ = "0.1.0"
