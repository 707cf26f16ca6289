"""The model server of serving-image/: one pinned MLflow model version behind MLflow's scoring protocol.

`python -m aliasroll.serving` is the image's entry point, and the tests start it the same way. It
imports nothing of the operator.
"""
