"""Regenerate the self-test samples in resources/samples/ from the photos ultralytics ships (AGPL-3.0).

Run with the train extra installed: `.venv/bin/python scripts/make_samples.py`. Deterministic: the same
seed, strengths and JPEG settings give the same files (resources/samples/README.md records them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: (sample stem, synthesis kind or "" for the original, strength px at a 2048-px long side, seed)
RECIPES: tuple[tuple[str, str, float, int], ...] = (
    ("sharp", "", 0.0, 0),
    ("defocused_blurred", "defocus", 40.0, 1),  # disk radius ~2% of the long side, in linear light
    ("motion_blurred", "linear_motion", 80.0, 2),  # straight path ~4% of the long side
)
SOURCES = ("bus", "zidane")
JPEG_QUALITY = 92


def _assets_dir() -> Path:
    """ultralytics' bundled sample photos, found without importing it (an import writes its settings file)."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise SystemExit("ultralytics is not installed: bash scripts/install.sh --train")
    return Path(spec.origin).resolve().parent / "assets"


def make_samples(out_dir: Path, sources: tuple[str, ...] = SOURCES) -> list[dict[str, object]]:
    """Write `<class>__<source>.jpg` for every recipe and source; return what was done."""
    import numpy as np
    from PIL import Image

    from trainer.synthesis import synthesize

    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = []
    for source in sources:
        src = _assets_dir() / f"{source}.jpg"
        original = np.asarray(Image.open(src).convert("RGB"))
        for label, kind, strength, seed in RECIPES:
            target = out_dir / f"{label}__{source}.jpg"
            if not kind:
                target.write_bytes(src.read_bytes())  # the original file, byte for byte
                records.append({"file": target.name, "from": f"ultralytics/assets/{source}.jpg"})
                continue
            image, record = synthesize(original, kind, np.random.default_rng(seed), strength_px=strength)
            Image.fromarray(image, "RGB").save(target, quality=JPEG_QUALITY)
            records.append({"file": target.name, "from": f"ultralytics/assets/{source}.jpg",
                            "seed": seed, **record.to_dict()})
    return records


def main() -> int:
    """Command line: write the samples and print what was done as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "resources" / "samples")
    parser.add_argument("--source", action="append", choices=SOURCES, help="only these photos (default: all)")
    args = parser.parse_args()
    records = make_samples(args.out, tuple(args.source) if args.source else SOURCES)
    print(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
