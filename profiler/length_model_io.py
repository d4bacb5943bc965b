"""Saving and loading length models without ever unpickling: skops with an explicit trust list.

A model file may come from a ConfigMap that anyone with edit rights on the namespace can write, so
loading must not run code. skops rebuilds objects from a declarative description and refuses any
type not on the list below; NumPy arrays load with ``allow_pickle=False``. After loading, the
shapes are checked so a file that is well-formed but inconsistent fails here, not per request.
"""

from __future__ import annotations

import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import skops.io as sio

from goodput.profiler.length_predictor import FORMAT_VERSION, LengthPredictor

__all__ = [
    "DEFAULT_MODEL",
    "TRUSTED_TYPES",
    "UntrustedModelFile",
    "default_model_path",
    "dumps_length_model",
    "load_default_length_model",
    "load_length_model",
    "loads_length_model",
    "loads_trusted",
    "save_length_model",
    "write_atomically",
]

DEFAULT_MODEL = "length_default.skops"

# Everything else in a saved LengthPredictor (dicts, floats, NumPy arrays) is in skops' default
# trusted set; this is the only type the project adds.
TRUSTED_TYPES: tuple[str, ...] = ("goodput.profiler.length_predictor.LengthPredictor",)


class UntrustedModelFile(ValueError):
    """The file names a type that is not on the trust list, or is not a usable length model."""


def save_length_model(model: LengthPredictor, path: str | Path) -> None:
    """Write a fitted model as a compressed skops file (atomically: readers never see half)."""
    write_atomically(path, dumps_length_model(model))


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def dumps_length_model(model: LengthPredictor) -> bytes:
    if not isinstance(model, LengthPredictor) or not hasattr(model, "coef_"):
        raise TypeError("only a fitted LengthPredictor can be saved")
    return bytes(sio.dumps(model, compression=zipfile.ZIP_DEFLATED, compresslevel=9))


def loads_length_model(data: bytes) -> LengthPredictor:
    """Load from bytes, refusing any type outside ``TRUSTED_TYPES`` and skops' safe defaults."""
    model = loads_trusted(data, TRUSTED_TYPES)
    _check(model)
    return model  # type: ignore[return-value]


def loads_trusted(data: bytes, trusted: tuple[str, ...]) -> object:
    """A skops file's object, refusing any type outside ``trusted`` and skops' safe defaults."""
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise UntrustedModelFile(f"not a skops model file: {err}") from err
    unexpected = sorted(set(untrusted) - set(trusted))
    if unexpected:
        raise UntrustedModelFile(f"model file contains untrusted types: {unexpected}")
    return sio.loads(data, trusted=list(trusted))


def load_length_model(path: str | Path) -> LengthPredictor:
    return loads_length_model(Path(path).read_bytes())


def default_model_path() -> Path:
    return Path(str(resources.files("goodput.profiler") / "models" / DEFAULT_MODEL))


def load_default_length_model() -> LengthPredictor:
    """The model shipped in the package (trained on AlpacaEval by ``goodput profile train``)."""
    return loads_length_model(
        (resources.files("goodput.profiler") / "models" / DEFAULT_MODEL).read_bytes()
    )


def _check(model: object) -> None:
    if not isinstance(model, LengthPredictor):
        raise UntrustedModelFile(f"expected a LengthPredictor, found {type(model).__name__}")
    version = getattr(model, "format_version_", 1)
    if version != FORMAT_VERSION:
        raise UntrustedModelFile(
            f"length model file has format {version}, this version reads {FORMAT_VERSION}: "
            "refit it (goodput profile train, or profile update from a request log)"
        )
    try:
        n = int(model.n_features)
        n_cues = model.cue_mean_.shape[0]
        dim = 2 + (n_cues if model.correction else 0)
        shapes_ok = (
            model.coef_.shape == (2 * n + n_cues,)
            and model.word_idf_.shape == (n,)
            and model.char_idf_.shape == (n,)
            and model.cue_scale_.shape == (n_cues,)
            and model.prior_mean_.shape == (dim,)
            and model.prior_cov_.shape == (dim, dim)
            and model.residual_quantiles_.shape == (99,)
            and all(np.shape(v) == (dim * dim + dim + 3,) for v in model.verbosity_.values())
        )
    except (AttributeError, TypeError, ValueError) as err:
        raise UntrustedModelFile(f"incomplete length model: {err}") from err
    if not shapes_ok:
        raise UntrustedModelFile("length model arrays have inconsistent shapes")
