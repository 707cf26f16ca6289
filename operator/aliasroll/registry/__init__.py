"""The MLflow Model Registry as the operator sees it: aliases per model, details per version.

`types` holds the values (no MLflow import), `client` the blocking MLflow calls, `poller` the shared,
batched view every resource reads.
"""
