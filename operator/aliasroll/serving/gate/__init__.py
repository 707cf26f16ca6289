"""The holdout gate: `python -m aliasroll.serving.gate`, the program of the Job the operator runs when
@canary moves (issue 24), in the serving image. It scores a labelled holdout with the candidate and
the production version, lets MLflow judge (`mlflow.models.evaluate`, `mlflow.validate_evaluation_results`
with `MetricThreshold`), logs one evaluation run, tags the candidate version, and reports to the
operator in the termination message (docs/gate.md). Like the rest of `serving/`, it imports nothing
of the operator.
"""
