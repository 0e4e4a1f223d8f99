"""Result values: frozen dataclasses, one per image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Classification:
    """Full classification of one image: every class probability, the top class and its confidence."""

    probabilities: dict[str, float]
    top_class: str
    confidence: float

    @classmethod
    def from_probabilities(cls, names: tuple[str, ...], probs: Any) -> Classification:
        """Build from a probability vector in the model's class order."""
        values = {name: float(p) for name, p in zip(names, probs, strict=True)}
        top = max(values, key=lambda n: values[n])
        return cls(probabilities=values, top_class=top, confidence=values[top])


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one file: a classification, or an error saying why it could not be read.

    With a chosen `blur_type`, `detected` is true when that type is the top prediction,
    `confidence` is the probability of the top prediction and `blur_type_probability`
    the probability of the chosen type.
    """

    path: str
    classification: Classification | None = None
    error: str | None = None
    blur_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.classification is not None

    @property
    def top_class(self) -> str | None:
        return self.classification.top_class if self.classification else None

    @property
    def confidence(self) -> float | None:
        return self.classification.confidence if self.classification else None

    @property
    def probabilities(self) -> dict[str, float]:
        return dict(self.classification.probabilities) if self.classification else {}

    @property
    def detected(self) -> bool | None:
        if self.classification is None or self.blur_type is None:
            return None
        return self.classification.top_class == self.blur_type

    @property
    def blur_type_probability(self) -> float | None:
        if self.classification is None or self.blur_type is None:
            return None
        return self.classification.probabilities[self.blur_type]

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON shape: `path` and `error`, or the classification (plus detection keys)."""
        if self.classification is None:
            return {"path": self.path, "error": self.error or "unknown error"}
        out: dict[str, Any] = {
            "path": self.path,
            "top_class": self.classification.top_class,
            "confidence": round(self.classification.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.classification.probabilities.items()},
        }
        if self.blur_type is not None:
            out["blur_type"] = self.blur_type
            out["detected"] = self.detected
            out["blur_type_probability"] = round(float(self.blur_type_probability or 0.0), 6)
        return out
