"""A tiny NumPy sentiment classifier, packaged as an MLflow pyfunc model.

Bag-of-words logistic regression trained with plain gradient descent: small enough to train in
milliseconds, real enough that an alias flip changes what a served endpoint answers.

This file is logged as "models from code" (``python_model=<path of this file>``): MLflow copies it
into the model and runs it at load time, so loading needs only mlflow, numpy and pandas, not this
directory on ``sys.path`` and no pickled class. It must therefore stay self-contained.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow.models import set_model

with warnings.catch_warnings():
    # MLflow 3.17's first import of mlflow.pyfunc.model warns about type hints of its own (ResponsesAgent);
    # keep it from failing importers that turn warnings into errors (pytest filterwarnings=error).
    warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning)
    from mlflow.pyfunc.model import PythonModel, PythonModelContext

# Key of the weights file in ``log_model(artifacts=...)`` and ``context.artifacts``.
WEIGHTS_ARTIFACT = "weights"

DEFAULT_EPOCHS = 400
DEFAULT_LEARNING_RATE = 2.0
DEFAULT_L2 = 1e-4

_WORD = re.compile(r"[a-z0-9']+")
_NEGATORS = frozenset({"not", "no", "never", "nothing", "nobody", "nor", "without"})

FloatArray = npt.NDArray[np.float64]


def tokenize(text: str) -> list[str]:
    """Lower-cased words; the word after a negation gets a ``not_`` prefix ("not worth" -> not_worth)."""
    tokens: list[str] = []
    negate = False
    for word in _WORD.findall(text.lower()):
        tokens.append(f"not_{word}" if negate else word)
        negate = word in _NEGATORS or word.endswith("n't")
    return tokens


@dataclass(frozen=True)
class Weights:
    """A trained model: vocabulary, one coefficient per word, and a bias."""

    vocabulary: tuple[str, ...]
    coef: FloatArray
    bias: float
    # Free-form label recorded with the weights (register.py stores its ``variant`` here).
    label: str = ""

    def features(self, texts: Iterable[str]) -> FloatArray:
        """Binary bag-of-words matrix, one row per text; unknown words are ignored."""
        index = {word: i for i, word in enumerate(self.vocabulary)}
        rows = list(texts)
        matrix = np.zeros((len(rows), len(self.vocabulary)), dtype=np.float64)
        for row, text in enumerate(rows):
            for token in tokenize(text):
                column = index.get(token)
                if column is not None:
                    matrix[row, column] = 1.0
        return matrix

    def predict_proba(self, texts: Iterable[str]) -> FloatArray:
        """Probability that each text is positive."""
        return _sigmoid(self.features(texts) @ self.coef + self.bias)

    def save(self, path: str | Path) -> None:
        # .npz of plain arrays (a unicode array for the words): loads with allow_pickle=False.
        np.savez(
            path,
            vocabulary=np.array(self.vocabulary, dtype=np.str_),
            coef=self.coef,
            bias=np.array(self.bias),
            label=np.array(self.label, dtype=np.str_),
        )

    @classmethod
    def load(cls, path: str | Path) -> Weights:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                vocabulary=tuple(str(word) for word in data["vocabulary"]),
                coef=data["coef"].astype(np.float64),
                bias=float(data["bias"]),
                label=str(data["label"]),
            )


def _sigmoid(z: FloatArray) -> FloatArray:
    # Clipped so large weights can't overflow np.exp.
    result: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return result


def train(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    l2: float = DEFAULT_L2,
    label: str = "",
) -> Weights:
    """Fit logistic regression by full-batch gradient descent on the mean log-loss (+ L2 on coef)."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts, and at least one: {len(texts)} != {len(labels)}")
    vocabulary = tuple(sorted({token for text in texts for token in tokenize(text)}))
    untrained = Weights(vocabulary, np.zeros(len(vocabulary)), 0.0)
    x = untrained.features(texts)
    y = np.asarray(labels, dtype=np.float64)
    coef = np.zeros(len(vocabulary))
    bias = 0.0
    for _ in range(epochs):
        error = _sigmoid(x @ coef + bias) - y
        coef -= learning_rate * (x.T @ error / len(y) + l2 * coef)
        bias -= learning_rate * float(error.mean())
    return Weights(vocabulary, coef, bias, label)


def load_dataset(path: str | Path) -> tuple[list[str], list[int]]:
    """Read a ``text,label`` CSV (label 1 positive, 0 negative)."""
    frame = pd.read_csv(path, dtype={"text": str, "label": int})
    return frame["text"].tolist(), frame["label"].tolist()


def _strings(values: Iterable[object]) -> list[str]:
    texts: list[str] = []
    for value in values:
        if isinstance(value, list | tuple | np.ndarray | pd.Series):
            # pyfunc turns {"text": ["a", "b"]} into ONE row whose cell is the list: score each string.
            texts.extend(str(item) for item in value)
        else:
            texts.append(str(value))
    return texts


def _texts(model_input: object) -> list[str]:
    """Accept what pyfunc callers send: a DataFrame with ``text``, a dict with "text", or strings."""
    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            return _strings(model_input["text"])
        if len(model_input.columns) == 1:
            # The logged signature has one unnamed column: a plain list arrives as column 0.
            return _strings(model_input.iloc[:, 0])
        raise ValueError(f"expected a 'text' column, got {list(model_input.columns)}")
    if isinstance(model_input, dict):
        value = model_input["text"]
        return [value] if isinstance(value, str) else _strings(value)
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, Iterable):
        return _strings(model_input)
    raise TypeError(f"unsupported model input type {type(model_input).__name__}")


class SentimentModel(PythonModel):
    """pyfunc wrapper: ``predict`` returns one positive-probability per input text."""

    def __init__(self, weights: Weights | None = None) -> None:
        # None when logged: load_context() reads the weights artifact. Given directly in unit tests.
        self._weights = weights

    def load_context(self, context: PythonModelContext) -> None:
        self._weights = Weights.load(context.artifacts[WEIGHTS_ARTIFACT])

    # The pd.DataFrame hint is deliberate: MLflow neither infers a schema from it nor converts inputs
    # to it (a Union or Any hint makes it warn). What arrives is what the signature lets through.
    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[float]:
        if self._weights is None:
            raise RuntimeError("model not loaded: load it with mlflow.pyfunc.load_model")
        return [float(p) for p in self._weights.predict_proba(_texts(model_input))]


# Models from code: MLflow runs this file when loading and takes the instance registered here.
set_model(SentimentModel())
