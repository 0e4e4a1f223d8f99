"""A second look at the frame's quadrants, for blur that covers the whole frame.

The model sees the whole frame at its input size (224 px), where defocus of 8-10 px or a shake of 24-30 px at a
2048-px long side is only one or two input pixels wide. Each quadrant of the frame, stretched to the same input
size, shows that blur twice as large. A blur of the whole frame (`defocused_blurred`, `motion_blurred`) is in every
quadrant, while a sharp runner, a sharp background or a sharp overlay keeps at least one quadrant sharp. So the
evidence a quadrant view adds is the *smallest* probability of a whole-frame blur over the quadrants: it raises
that class where all of them agree, and never touches `sharp` or `defocused_object_portrait` (that one needs the
whole frame: which part is soft). Measured on the shipped model's validation and test images (models/MODEL_CARD.md,
"Quadrant check"): visible blur found 425 instead of 413 of 485 on validation and 123 instead of 119 of 139 on
test, with the same sharp images flagged (4 of 179, 5 of 222, no held-out race photo).

The quadrants cost four more inferences and a second decode, so they are only looked at when the whole frame
already gives a whole-frame blur some probability (`gate`): about 6 % of the shared race photos, and every image
the whole frame calls blurred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.preprocess import InputSpec, to_model_image, to_tensor

#: The classes a quadrant view may raise: blur that covers the whole frame.
WHOLE_FRAME_BLURS: tuple[str, ...] = ("defocused_blurred", "motion_blurred")


@dataclass(frozen=True)
class TileCheck:
    """When and how the quadrants of a frame are classified too.

    Args:
        grid: tiles per side (2: the four quadrants).
        gate: the whole-frame probability of `defocused_blurred` or `motion_blurred` from which the tiles are
            looked at (chosen on validation: 0.05 keeps 424 of the 425 visible blurs that tiles everywhere find).
    """

    grid: int = 2
    gate: float = 0.05

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"grid must be at least 2, got {self.grid}")
        if not 0.0 <= self.gate <= 1.0:
            raise ValueError(f"gate must be a probability, got {self.gate}")

    def applies(self, spec: InputSpec) -> bool:
        """Only for whole-frame (stretch) models: a centre-cropping model never sees the frame's edges."""
        return spec.resize == "stretch"

    def wanted(self, probs: np.ndarray, names: tuple[str, ...]) -> bool:
        """Whether the whole frame's probabilities call for a look at the tiles."""
        return max(float(probs[names.index(c)]) for c in WHOLE_FRAME_BLURS) >= self.gate

    def boxes(self, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The tiles of a `size` (width, height) frame, row by row."""
        w, h = size
        g = self.grid
        return [(i * w // g, j * h // g, (i + 1) * w // g, (j + 1) * h // g) for j in range(g) for i in range(g)]

    def inputs(self, image: Image.Image, spec: InputSpec) -> np.ndarray:
        """The tiles of a decoded RGB image as a batch of model inputs, each made like the whole frame's."""
        return np.stack([to_tensor(to_model_image(image.crop(box), spec)) for box in self.boxes(image.size)])

    def fuse(self, whole: np.ndarray, tiles: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """The whole frame's probabilities, each whole-frame blur raised to its smallest tile probability."""
        out = np.array(whole, dtype=np.float64)
        for c in WHOLE_FRAME_BLURS:
            k = names.index(c)
            out[k] = max(out[k], float(np.min(tiles[:, k])))
        return out / out.sum()
