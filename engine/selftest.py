"""`--self-test`: load the bundled model, classify the bundled samples and check the verdicts.

Samples live in `resources/samples/` and are named `<expected class>__<anything>.jpg`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from engine.errors import EngineError
from engine.paths import default_model_dir, resource_path


def run_self_test(model_dir: Path | None = None, samples_dir: Path | None = None, out: TextIO | None = None) -> int:
    """Return 0 when every sample gets its expected class, 1 otherwise (with the reason printed)."""
    from engine.model import load_classifier

    out = out or sys.stdout
    samples_dir = samples_dir or resource_path("samples")
    model_dir = model_dir or default_model_dir()
    try:
        classifier = load_classifier(model_dir)
    except EngineError as exc:
        out.write(f"self-test FAILED: cannot load the model from {model_dir}: {exc}\n")
        return 1
    samples = sorted(samples_dir.glob("*__*.*")) if samples_dir.is_dir() else []
    if not samples:
        out.write(f"self-test FAILED: no samples in {samples_dir}\n")
        return 1
    failures = 0
    for sample in samples:
        expected = sample.name.split("__", 1)[0]
        result = classifier.classify(sample)
        if not result.ok:
            out.write(f"FAIL {sample.name}: {result.error}\n")
            failures += 1
            continue
        verdict = "ok  " if result.top_class == expected else "FAIL"
        failures += result.top_class != expected
        out.write(f"{verdict} {sample.name}: {result.top_class} ({result.confidence:.1%}), expected {expected}\n")
    if failures:
        out.write(f"self-test FAILED: {failures} of {len(samples)} samples misclassified\n")
        return 1
    out.write(f"self-test passed: {len(samples)} samples, model {model_dir}\n")
    return 0
