"""Saving and loading quality models without unpickling (skops with an explicit trust list, as
``length_model_io`` does for length models), and the model shipped in the package.

The shipped file's name carries its format version: a router of another version finds no file
rather than misreading one.
"""

from __future__ import annotations

import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import skops.io as sio

from goodput.profiler.length_model_io import UntrustedModelFile, loads_trusted, write_atomically
from goodput.profiler.quality_predictor import FORMAT_VERSION, QualityPredictor

__all__ = [
    "DEFAULT_QUALITY_MODEL",
    "TRUSTED_TYPES",
    "default_quality_model_path",
    "dumps_quality_model",
    "load_default_quality_model",
    "load_quality_model",
    "loads_quality_model",
    "save_quality_model",
]

DEFAULT_QUALITY_MODEL = f"quality_v{FORMAT_VERSION}.skops"
TRUSTED_TYPES: tuple[str, ...] = ("goodput.profiler.quality_predictor.QualityPredictor",)


def dumps_quality_model(model: QualityPredictor) -> bytes:
    if not isinstance(model, QualityPredictor) or not hasattr(model, "coef_"):
        raise TypeError("only a fitted QualityPredictor can be saved")
    return bytes(sio.dumps(model, compression=zipfile.ZIP_DEFLATED, compresslevel=9))


def save_quality_model(model: QualityPredictor, path: str | Path) -> None:
    write_atomically(path, dumps_quality_model(model))


def loads_quality_model(data: bytes) -> QualityPredictor:
    """Load from bytes, refusing untrusted types and files whose arrays do not fit together."""
    model = loads_trusted(data, TRUSTED_TYPES)
    if not isinstance(model, QualityPredictor):
        raise UntrustedModelFile(f"expected a QualityPredictor, found {type(model).__name__}")
    version = getattr(model, "format_version_", None)
    if version != FORMAT_VERSION:
        raise UntrustedModelFile(
            f"quality model file has format {version}, this version reads {FORMAT_VERSION}"
        )
    try:
        n_cues = model.cue_mean_.shape[0]
        consistent = (
            model.coef_.shape == (int(model.n_features) + n_cues,)
            and model.idf_.shape == (int(model.n_features),)
            and model.cue_scale_.shape == (n_cues,)
            and model.score_quantiles_.shape == (99,)
            and all(np.shape(v) == (2,) for v in model.calibration_.values())
            and bool(model.calibration_)
        )
    except (AttributeError, TypeError, ValueError) as err:
        raise UntrustedModelFile(f"incomplete quality model: {err}") from err
    if not consistent:
        raise UntrustedModelFile("quality model arrays have inconsistent shapes")
    return model


def load_quality_model(path: str | Path) -> QualityPredictor:
    return loads_quality_model(Path(path).read_bytes())


def default_quality_model_path() -> Path:
    return Path(str(resources.files("goodput.profiler") / "models" / DEFAULT_QUALITY_MODEL))


def load_default_quality_model() -> QualityPredictor:
    """The model shipped in the package (all of AlpacaEval's verdicts, ``goodput profile
    train-quality``)."""
    return load_quality_model(default_quality_model_path())
