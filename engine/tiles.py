"""A second look at the frame's quadrants and centre, for blur that covers the whole frame.

The model sees the whole frame at its input size (224 px), where defocus of 8-10 px or a shake of 24-30 px at a
2048-px long side is only one or two input pixels wide. Each quadrant of the frame, stretched to the same input
size, shows that blur twice as large. A blur of the whole frame (`defocused_blurred`, `motion_blurred`) is in every
quadrant, while a sharp runner, a sharp background or a sharp overlay keeps at least one view sharp. The runner is
often in the middle of the frame, where the quadrants cut them in four (a panning shot then looks streaked in every
quadrant), so the centre half of the frame, at the same scale, is a fifth view. The evidence these views add is
the *smallest* probability of a whole-frame blur over them: it raises that class where all of them agree, and never
touches `sharp` or `defocused_object_portrait` (that one needs the whole frame: which part is soft). Measured on the
shipped model's validation and test images (models/MODEL_CARD.md, "Quadrant check"): visible blur found 424
instead of 413 of 485 on validation and 123 instead of 119 of 139 on test, with the same sharp images flagged (4 of
179, 5 of 222, no held-out race photo); on a second synthesis of the validation photos 357 instead of 350 of 412,
again with the same sharp images flagged (without the centre view, one more: a panning shot).

One more piece of evidence since 2026-12-07: the centre view may overrule a `sharp` verdict with `motion_blurred`
(`overrule_gate`), for a runner's own smear, which the quadrants cut apart and the whole frame sees too small. With
the geometric-mean model, on the held-out images of two fresh synthesis draws: the same 1 of 802 sharp images
flagged, 1,352 instead of 1,340 of 1,457 visible blurs found (models/MODEL_CARD.md, "The centre view overrules a
sharp verdict").

The views cost five more inferences and a second decode, so they are only looked at when the whole frame already
gives a whole-frame blur some probability (`gate`), or motion from `overrule_gate`: 2 % of the 350 shared race
photos (with the model of 2026-12-05; 1 of them with the geometric-mean model), and every image the whole frame calls
defocused or motion-blurred. That second decode keeps each view's short side at least `min_tile_side` times the input size
(a 2048-px export at half scale, a 24 MP original at a quarter), as in the validation images the check was chosen
on (1,024-px frames: views of 512 x 341 px).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from engine.preprocess import InputSpec, exposed, finish_view

#: The classes a quadrant view may raise: blur that covers the whole frame.
WHOLE_FRAME_BLURS: tuple[str, ...] = ("defocused_blurred", "motion_blurred")

#: The class the centre view may give a frame the whole frame calls sharp (`TileCheck.overrule_gate`).
CENTRE_OVERRULE = "motion_blurred"


@dataclass(frozen=True)
class TileCheck:
    """When and how the tiles of a frame (its quadrants and its centre) are classified too.

    Args:
        grid: tiles per side (2: the four quadrants); the centre view has a tile's size.
        min_tile_side: a tile's short side, as a multiple of the input size, that the second decode keeps.
        gate: the whole-frame probability of `defocused_blurred` or `motion_blurred` from which the tiles are
            looked at (chosen on validation: the cheapest gate that keeps what 0.05 finds, 424 visible blurs of 485
            against 425 with tiles everywhere; 0.2 finds 422).
        overrule_gate: the whole-frame probability of `motion_blurred` from which the centre view may overrule a
            `sharp` verdict (None: never). A runner's own smear or a shake that is a pixel or two wide at the input
            size is twice as wide in the centre view, which holds the runner more often than not: where the whole
            frame still says sharp but gives motion at least this and the centre view says `motion_blurred` at
            `overrule_min` or more, the centre view's probabilities are the answer. Chosen on validation with the
            geometric-mean model (models/MODEL_CARD.md, "The centre view overrules a sharp verdict"); it also
            widens the gate, so the tiles are looked at from this much motion.
        overrule_min: the centre view's `motion_blurred` probability that overrules a sharp verdict.
    """

    grid: int = 2
    gate: float = 0.1
    min_tile_side: float = 1.5
    overrule_gate: float | None = 0.05
    overrule_min: float = 0.9

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"grid must be at least 2, got {self.grid}")
        if not 0.0 <= self.gate <= 1.0:
            raise ValueError(f"gate must be a probability, got {self.gate}")
        if not self.min_tile_side >= 1.0:
            raise ValueError(f"min_tile_side must be at least 1, got {self.min_tile_side}")
        if self.overrule_gate is not None and not 0.0 <= self.overrule_gate <= 1.0:
            raise ValueError(f"overrule_gate must be a probability or None, got {self.overrule_gate}")
        if not 0.5 < self.overrule_min <= 1.0:
            raise ValueError(f"overrule_min must be above 0.5 and at most 1, got {self.overrule_min}")

    def decode_spec(self, spec: InputSpec) -> InputSpec:
        """How a file is decoded for its tiles: JPEG draft scale down to tiles of `min_tile_side` x the input."""
        factor = self.grid * self.min_tile_side
        return replace(spec, draft_factor=factor, original_draft_factor=factor)

    def describe(self) -> str:
        """The check as one line, to tell results made under another rule apart (engine.store)."""
        rule = (f"quadrant check: {self.grid}x{self.grid} tiles and the centre, smallest probability of "
                f"{'/'.join(WHOLE_FRAME_BLURS)}, gate {self.gate:g}, tile side >= {self.min_tile_side:g} x input")
        if self.overrule_gate is not None:
            rule += (f"; the centre view's {CENTRE_OVERRULE} >= {self.overrule_min:g} overrules sharp from "
                     f"{self.overrule_gate:g} of it in the whole frame")
        return rule

    def applies(self, spec: InputSpec) -> bool:
        """Only for whole-frame (stretch) models: a centre-cropping model never sees the frame's edges."""
        return spec.resize == "stretch"

    def past_gate(self, probs: np.ndarray, names: tuple[str, ...]) -> bool:
        """Whether the whole frame gives a whole-frame blur `gate` or more (the tiles then may raise it)."""
        return max(float(probs[names.index(c)]) for c in WHOLE_FRAME_BLURS) >= self.gate

    def wanted(self, probs: np.ndarray, names: tuple[str, ...]) -> bool:
        """Whether the whole frame's probabilities call for a look at the tiles."""
        if self.past_gate(probs, names):
            return True
        return self.overrule_gate is not None and float(probs[names.index(CENTRE_OVERRULE)]) >= self.overrule_gate

    def boxes(self, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The tiles of a `size` (width, height) frame, row by row, then the centre view of a tile's size."""
        w, h = size
        g = self.grid
        tiles = [(i * w // g, j * h // g, (i + 1) * w // g, (j + 1) * h // g) for j in range(g) for i in range(g)]
        tw, th = w // g, h // g
        left, top = (w - tw) // 2, (h - th) // 2
        return [*tiles, (left, top, left + tw, top + th)]

    def inputs(self, image: Image.Image, spec: InputSpec) -> np.ndarray:
        """The tiles (and centre view) of a decoded RGB image as a batch of model inputs, made like the whole frame's.

        An underexposed frame is brought up as a whole (engine.preprocess.lift_dark), as for the whole frame's view,
        on the white point of its quadrant views together (made anyway): a dark part of a well-exposed frame (a night
        sky, a shadow) is not a dark frame.
        """
        crops, views = exposed([image.crop(box) for box in self.boxes(image.size)], spec, self.grid * self.grid)
        return np.stack([finish_view(crop, view, spec) for crop, view in zip(crops, views)])

    def fuse(self, whole: np.ndarray, tiles: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """The whole frame's probabilities, each whole-frame blur raised to its smallest probability over the tiles.

        `tiles` are the views in `boxes` order (the centre last). The blurs are raised only where the whole frame
        passes `gate` (the tiles may have been looked at for the overrule alone). Where that leaves `sharp` on top,
        the centre view may overrule it (`overrule_gate`): its own probabilities are then the answer.
        """
        out = np.array(whole, dtype=np.float64)
        if self.past_gate(whole, names):
            for c in WHOLE_FRAME_BLURS:
                k = names.index(c)
                out[k] = max(out[k], float(np.min(tiles[:, k])))
        out /= out.sum()
        if self.overrule_gate is not None and names[int(np.argmax(out))] == "sharp":
            k = names.index(CENTRE_OVERRULE)
            centre = np.array(tiles[-1], dtype=np.float64)
            if float(whole[k]) >= self.overrule_gate and centre[k] >= self.overrule_min:
                return centre / centre.sum()
        return out
