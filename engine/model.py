"""Loading a model folder (ONNX + class_names.json) and classifying images with it."""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import InvalidBlurTypeError, ModelLoadError, UnreadableImageError
from engine.paths import default_model_dir
from engine.preprocess import (
    DARK_GATE,
    DEFAULT_MAX_PIXELS,
    VEIL_GATE,
    InputSpec,
    load_model_input,
    open_image,
    parse_reducing_gap,
    preprocess,
)
from engine.results import Classification, ImageResult
from engine.tiles import TileCheck

#: The product's classes. Their *order* always comes from the model files; this only checks the set.
SHARP = "sharp"
PRODUCT_CLASSES: frozenset[str] = frozenset(
    {SHARP, "defocused_object_portrait", "defocused_blurred", "motion_blurred"}
)
CLASS_NAMES_FILE = "class_names.json"
#: ONNX metadata key BlurFlag's exporter writes with the resize mode; plain ultralytics exports lack it.
RESIZE_METADATA_KEY = "blurflag_resize"
REDUCING_GAP_METADATA_KEY = "blurflag_reducing_gap"
#: ONNX metadata keys with the JPEG draft factors a model asks for (InputSpec.draft_factor, .original_draft_factor;
#: absent: InputSpec's defaults). A network whose input holds more detail than its features' size (the fine stem of
#: trainer.imagenet) needs a decode of less than the defaults' margin over its input size.
DRAFT_METADATA_KEY = "blurflag_draft_factor"
ORIGINAL_DRAFT_METADATA_KEY = "blurflag_original_draft_factor"


@dataclass(frozen=True)
class EngineConfig:
    """Explicit engine settings; the engine never reads environment variables or Qt settings."""

    model_dir: Path | None = None  # None: the bundled model
    intra_op_threads: int = 0  # onnxruntime threads per inference call; 0 lets onnxruntime choose
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_factor: float | None = None  # None: the model's default (see InputSpec)
    tile_check: TileCheck | None = field(default_factory=TileCheck)  # None: the whole frame only (engine.tiles)
    veil_gate: int | None = VEIL_GATE  # lift a bright veil from views this bright at their darkest (engine.preprocess)
    dark_gate: int | None = DARK_GATE  # bring up frames whose white point is below this (engine.preprocess.lift_dark)

    @classmethod
    def whole_frame(cls, **kwargs: Any) -> EngineConfig:
        """The network's whole-frame verdict alone: no quadrant check, no veil or dark lift (earlier reports')."""
        return cls(tile_check=None, veil_gate=None, dark_gate=None, **kwargs)


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder declares."""

    onnx_path: Path
    names: tuple[str, ...]
    spec: InputSpec
    metadata: dict[str, str]

    @property
    def blur_types(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n != SHARP)


def read_model_info(model_dir: Path, config: EngineConfig | None = None) -> tuple[ModelInfo, Any]:
    """Open the ONNX session for a model folder and check it against `class_names.json`.

    Returns:
        The checked model description and its `onnxruntime.InferenceSession`.

    Raises:
        ModelLoadError: on a missing file, unreadable JSON, or any disagreement between the files.
    """
    import onnxruntime as ort

    config = config or EngineConfig()
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder not found: {model_dir}")
    onnx_files = sorted(model_dir.glob("*.onnx"))
    if len(onnx_files) != 1:
        found = ", ".join(f.name for f in onnx_files) or "none"
        raise ModelLoadError(f"{model_dir} must hold exactly one .onnx file (found: {found})")
    names_file = model_dir / CLASS_NAMES_FILE
    try:
        raw = json.loads(names_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{names_file} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{names_file} is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise ModelLoadError(f"{names_file} must be a JSON list of class names in output order")
    names = tuple(raw)
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{names_file} repeats a class name: {list(names)}")
    if set(names) != PRODUCT_CLASSES:
        missing = sorted(PRODUCT_CLASSES - set(names))
        unknown = sorted(set(names) - PRODUCT_CLASSES)
        raise ModelLoadError(
            f"{names_file} must name exactly the classes {sorted(PRODUCT_CLASSES)}"
            f" (missing: {missing or 'none'}, unknown: {unknown or 'none'})"
        )

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, config.intra_op_threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle onnxruntime threads would spin between runs, taking CPU from the decode threads that feed them
    # (bench/README.md: a few ms of CPU per image on 2 cores); blocking costs nothing measurable here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            str(onnx_files[0]), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ModelLoadError(f"cannot load {onnx_files[0].name}: {exc}") from None

    metadata = dict(session.get_modelmeta().custom_metadata_map)
    meta_names = metadata_names(metadata)
    if meta_names is not None and meta_names != names:
        raise ModelLoadError(
            f"{names_file} {list(names)} disagrees with the ONNX metadata names {list(meta_names)}"
        )
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError("the ONNX model must have exactly one input and one output")
    out_dim = outputs[0].shape[-1]
    if isinstance(out_dim, int) and out_dim != len(names):
        raise ModelLoadError(f"the ONNX model has {out_dim} outputs but {names_file} names {len(names)} classes")

    size = input_size(metadata, inputs[0].shape)
    resize = metadata.get(RESIZE_METADATA_KEY, "center_crop")
    if resize not in ("stretch", "center_crop"):
        raise ModelLoadError(f"unknown resize mode {resize!r} in the ONNX metadata")
    spec_kwargs: dict[str, Any] = {"size": size, "resize": resize, "max_pixels": config.max_pixels,
                                   "reducing_gap": _reducing_gap(metadata), "veil_gate": config.veil_gate,
                                   "dark_gate": config.dark_gate}
    for key, name in ((DRAFT_METADATA_KEY, "draft_factor"), (ORIGINAL_DRAFT_METADATA_KEY, "original_draft_factor")):
        if key in metadata:
            spec_kwargs[name] = _draft_factor(metadata, key)
    if config.draft_factor is not None:
        spec_kwargs["draft_factor"] = config.draft_factor
    info = ModelInfo(onnx_files[0], names, InputSpec(**spec_kwargs), metadata)
    return info, session


def _reducing_gap(metadata: dict[str, str]) -> float | None:
    """The resize's reducing gap the model was trained with; None (no reduction) when not recorded."""
    try:
        return parse_reducing_gap(metadata.get(REDUCING_GAP_METADATA_KEY))
    except ValueError as exc:
        raise ModelLoadError(f"bad {REDUCING_GAP_METADATA_KEY} in the ONNX metadata: {exc}") from None


def _draft_factor(metadata: dict[str, str], key: str) -> float:
    """A draft factor from the metadata: a finite number >= 0 (0: decode in full)."""
    try:
        value = float(metadata[key])
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise ModelLoadError(f"bad {key} in the ONNX metadata: a number >= 0, got {metadata[key]!r}")
    return value


def metadata_names(metadata: dict[str, str]) -> tuple[str, ...] | None:
    """The class names in output order from a model's `names` metadata (ultralytics' "{0: 'a', ...}"), if any."""
    text = metadata.get("names")
    if not text:
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ModelLoadError(f"unreadable 'names' in the ONNX metadata: {text[:80]}") from None
    if isinstance(parsed, dict):
        return tuple(str(parsed[k]) for k in sorted(parsed, key=int))
    if isinstance(parsed, (list, tuple)):
        return tuple(str(n) for n in parsed)
    raise ModelLoadError("the ONNX metadata 'names' is neither a dict nor a list")


def input_size(metadata: dict[str, str], shape: list[Any]) -> int:
    """A model's square input side: its input's static shape, else its `imgsz` metadata."""
    dims = [d for d in shape[2:] if isinstance(d, int)]
    if len(dims) == 2:
        if dims[0] != dims[1]:
            raise ModelLoadError(f"only square model inputs are supported, got {dims}")
        return int(dims[0])
    text = metadata.get("imgsz")
    if text:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        values = list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
        if values and all(isinstance(v, int) for v in values):
            if len(set(values)) != 1:
                raise ModelLoadError(f"only square model inputs are supported, got imgsz {values}")
            return int(values[0])
    raise ModelLoadError("cannot tell the model's input size (no static shape, no 'imgsz' metadata)")


class BlurClassifier:
    """Owns one onnxruntime session; `predict` and `classify*` are safe to call from many threads."""

    def __init__(self, info: ModelInfo, session: Any, tile_check: TileCheck | None = None) -> None:
        self.info = info
        self._session = session
        self.tile_check = tile_check if tile_check is not None and tile_check.applies(info.spec) else None
        self._input_name: str = session.get_inputs()[0].name
        self._batch_fixed = isinstance(session.get_inputs()[0].shape[0], int)

    @property
    def names(self) -> tuple[str, ...]:
        return self.info.names

    @property
    def blur_types(self) -> tuple[str, ...]:
        return self.info.blur_types

    @property
    def spec(self) -> InputSpec:
        return self.info.spec

    def check_blur_type(self, blur_type: str | None) -> str | None:
        """Return `blur_type` if it is selectable (or None); otherwise raise with the valid types."""
        if blur_type is None or blur_type in self.blur_types:
            return blur_type
        valid = ", ".join(sorted(self.blur_types))
        raise InvalidBlurTypeError(f"unknown blur type {blur_type!r}; choose one of: {valid}")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N x classes) for a float32 N x 3 x S x S batch."""
        if batch.ndim != 4:
            raise ValueError(f"expected an N x 3 x S x S batch, got shape {batch.shape}")
        if self._batch_fixed and batch.shape[0] != 1:
            return np.concatenate([self.predict(batch[i : i + 1]) for i in range(batch.shape[0])])
        (out,) = self._session.run(None, {self._input_name: batch.astype(np.float32, copy=False)})
        probs = np.asarray(out, dtype=np.float64).reshape(batch.shape[0], -1)
        if not (np.all(probs >= -1e-6) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
            probs = _softmax(probs)  # a model exported without its final Softmax
        return probs

    @property
    def decision_rule(self) -> str:
        """How probabilities become verdicts beyond the network: results made under another rule are stale."""
        rule = self.tile_check.describe() if self.tile_check is not None else "whole frame"
        if self.spec.veil_gate is not None:
            rule += f"; veil lifted from views at least {self.spec.veil_gate} at their darkest 0.5%"
        if self.spec.dark_gate is not None:
            rule += f"; frames below {self.spec.dark_gate} at their brightest 0.5% brought up"
        return rule

    def wants_tiles(self, probs: np.ndarray) -> bool:
        """Whether the whole frame's probabilities call for the quadrant check (engine.tiles)."""
        return self.tile_check is not None and self.tile_check.wanted(probs, self.names)

    def tile_inputs(self, image: Image.Image) -> np.ndarray:
        """The quadrant check's model inputs for a decoded RGB image (only with a tile check)."""
        if self.tile_check is None:
            raise ValueError("this classifier has no tile check")
        return self.tile_check.inputs(image, self.spec)

    def load_tile_inputs(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The quadrant check's model inputs for a file, decoded at the tiles' own scale (only with a tile check).

        Raises:
            UnreadableImageError: for a file that cannot be used (any more).
        """
        if self.tile_check is None:
            raise ValueError("this classifier has no tile check")
        return self.tile_inputs(open_image(path, self.tile_check.decode_spec(self.spec)))

    def fuse_tiles(self, whole: np.ndarray, tiles: np.ndarray) -> np.ndarray:
        """The whole frame's probabilities with the quadrant check's evidence (only with a tile check)."""
        if self.tile_check is None:
            raise ValueError("this classifier has no tile check")
        return self.tile_check.fuse(whole, self.predict(tiles), self.names)

    def check_tiles(self, path: str | os.PathLike[str], whole: np.ndarray) -> np.ndarray:
        """`whole` (a file's whole-frame probabilities) with the quadrant check applied where it calls for it.

        The file is read again at the tiles' own scale; if that fails (the file gone or changed since its first read)
        or the tiles cannot be inferred, the whole frame's answer stands.
        """
        if not self.wants_tiles(whole):
            return whole
        try:
            return self.fuse_tiles(whole, self.load_tile_inputs(path))
        except Exception:  # noqa: BLE001 - a refinement: never worse than the whole frame's answer
            return whole

    def predict_image(self, image: Image.Image) -> np.ndarray:
        """Probabilities for one decoded RGB image: the whole frame, then its quadrants where wanted."""
        probs = self.predict(preprocess(image, self.spec)[None])[0]
        if self.wants_tiles(probs):
            probs = self.fuse_tiles(probs, self.tile_inputs(image))
        return probs

    def result_from_probs(self, path: str, probs: np.ndarray, blur_type: str | None = None) -> ImageResult:
        """Wrap one probability row as an `ImageResult`."""
        return ImageResult(path, Classification.from_probabilities(self.names, probs), None, blur_type)

    def classify_image(self, image: Image.Image, blur_type: str | None = None, path: str = "") -> ImageResult:
        """Classify an RGB image already in memory."""
        self.check_blur_type(blur_type)
        return self.result_from_probs(path, self.predict_image(image.convert("RGB")), blur_type)

    def classify(self, path: str | os.PathLike[str], blur_type: str | None = None) -> ImageResult:
        """Classify one file; an unreadable file gives a result with `error` set, never an exception."""
        self.check_blur_type(blur_type)
        try:
            x = load_model_input(path, self.spec)[None]
        except UnreadableImageError as exc:
            return ImageResult(str(path), None, str(exc), blur_type)
        return self.result_from_probs(str(path), self.check_tiles(path, self.predict(x)[0]), blur_type)

    def classify_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        blur_type: str | None = None,
        workers: int | None = None,
        batch_size: int = 8,
    ) -> Iterator[ImageResult]:
        """Classify many files in input order, decoding in parallel; see `engine.pipeline`."""
        from engine.pipeline import classify_paths

        return classify_paths(self, paths, blur_type=blur_type, workers=workers, batch_size=batch_size)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_classifier(model_dir: str | os.PathLike[str] | None = None, config: EngineConfig | None = None) -> BlurClassifier:
    """Load a model folder (default: the bundled model) into a shareable classifier."""
    config = config or EngineConfig()
    directory = Path(model_dir) if model_dir is not None else (config.model_dir or default_model_dir())
    info, session = read_model_info(directory, config)
    return BlurClassifier(info, session, config.tile_check)
