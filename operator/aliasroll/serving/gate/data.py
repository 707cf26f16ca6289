"""The holdout: its size asked of the artifact store first and refused past the byte budget, then
downloaded into scratch (the size checked again), read as CSV or Parquet, and its target column
checked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aliasroll.serving.gate.message import BAD_DATA, BAD_DATA_URI, DATA_TOO_LARGE, MISSING_COLUMN, GateError

log = logging.getLogger("aliasroll.serving.gate")


def _split(uri: str) -> tuple[str, str]:
    """`runs:/<run>/data/holdout.csv` -> (`runs:/<run>/data`, `holdout.csv`)."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or parent.endswith(":") or parent in ("runs:", "mlflow-artifacts:"):
        raise GateError(BAD_DATA_URI, "the data URI names no file")
    return parent, name


def _listed_size(repository: Any, name: str) -> int | None:
    """The file's size as the store lists it (None when it does not say); BadDataURI when absent."""
    for info in repository.list_artifacts():
        if info.path.rpartition("/")[2] == name and not info.is_dir:
            return None if info.file_size is None else int(info.file_size)
    raise GateError(BAD_DATA_URI, "the data URI names no file the artifact store lists")


def fetch(uri: str, destination: Path, *, max_bytes: int) -> Path:
    """The holdout's local copy, at most `max_bytes` (DataTooLarge), or BadDataURI."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    parent, name = _split(uri)
    try:
        repository = get_artifact_repository(parent)
        size = _listed_size(repository, name)
    except GateError:
        raise
    except Exception as error:
        log.error("cannot list the holdout's folder: %s", type(error).__name__)
        raise GateError(BAD_DATA_URI, f"cannot list the holdout's folder: {error}") from None
    if size is not None and size > max_bytes:
        raise GateError(DATA_TOO_LARGE, f"the holdout is {size} bytes, more than {max_bytes}")
    destination.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(repository.download_artifacts(name, dst_path=str(destination)))
    except Exception as error:
        raise GateError(BAD_DATA_URI, f"cannot download the holdout: {error}") from None
    got = local.stat().st_size
    if got > max_bytes:  # a store that listed less than it sent
        local.unlink(missing_ok=True)
        raise GateError(DATA_TOO_LARGE, f"the holdout downloaded is {got} bytes, more than {max_bytes}")
    return local


def read(path: Path, target: str) -> Any:
    """The holdout as a DataFrame, with the target column and at least one feature and one row."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except ImportError as error:
        raise GateError(BAD_DATA, f"cannot read {path.suffix} files here: {error}") from None
    except Exception as error:
        raise GateError(BAD_DATA, f"cannot read the holdout: {type(error).__name__}: {error}") from None
    if target not in frame.columns:
        raise GateError(MISSING_COLUMN, f"the holdout has no column {target!r}")
    if len(frame) == 0 or len(frame.columns) < 2:
        raise GateError(BAD_DATA, "the holdout needs at least one row and one column beside the target")
    if frame[target].isna().any():
        raise GateError(BAD_DATA, f"the target column {target!r} has missing values")
    return frame
