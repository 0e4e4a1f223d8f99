"""`blurflag` command line: classify images and folders, print a table or JSON lines."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from engine import __version__
from engine.errors import EngineError, InvalidBlurTypeError, ModelLoadError
from engine.preprocess import is_image_path
from engine.results import ImageResult

EXIT_OK, EXIT_UNREADABLE, EXIT_USAGE = 0, 1, 2
_PROGRESS_MIN = 20  # show a progress bar on stderr only for runs at least this long


class _UsageError(Exception):
    pass


def expand_paths(inputs: Sequence[str], recursive: bool) -> list[str]:
    """Files stay as given (any suffix, so a bad file gets its own error); folders expand to their images."""
    out: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            pattern = p.rglob("*") if recursive else p.glob("*")
            found = sorted(
                str(f) for f in pattern
                if f.is_file() and is_image_path(f) and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            out.extend(found)
        else:
            out.append(raw)
    return out


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blurflag", description="Flag blurred race photos, offline.")
    parser.add_argument("--version", action="version", version=f"blurflag {__version__}")
    parser.add_argument("--self-test", action="store_true", help="check the bundled model on bundled samples and exit")
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("classify", help="classify images or folders")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--blur-type", help="flag this blur type: defocused_object_portrait, defocused_blurred or motion_blurred")
    c.add_argument("--json", action="store_true", help="one JSON object per image per line")
    c.add_argument("--recursive", "-r", action="store_true", help="include subfolders")
    c.add_argument("--model", metavar="DIR", help="model folder (default: the bundled model)")
    c.add_argument("--workers", type=int, default=None, help="decode threads (default: one per core)")
    return parser


def _progress(done: int, total: int, start: float, stream: TextIO) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.perf_counter() - start, 1e-9)
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:5.1f} img/s")
    if done == total:
        stream.write("\n")
    stream.flush()


def _table_row(r: ImageResult, name_width: int) -> str:
    name = r.path if len(r.path) <= name_width else "…" + r.path[-(name_width - 1):]
    if not r.ok:
        return f"{name:<{name_width}}  ERROR: {r.error}"
    conf = f"{(r.confidence or 0.0):6.1%}"
    if r.blur_type is None:
        return f"{name:<{name_width}}  {r.top_class:<26} {conf}"
    verdict = "FLAGGED" if r.detected else "ok"
    return f"{name:<{name_width}}  {verdict:<8} {r.top_class:<26} {conf}  {(r.blur_type_probability or 0.0):6.1%}"


def _run_classify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from engine.model import EngineConfig, load_classifier

    paths = expand_paths(args.paths, args.recursive)
    if not paths:
        raise _UsageError("no images found in the given paths")
    config = EngineConfig(model_dir=Path(args.model) if args.model else None)
    classifier = load_classifier(config.model_dir, config)
    blur_type = classifier.check_blur_type(args.blur_type)
    results: Iterator[ImageResult] = classifier.classify_paths(paths, blur_type=blur_type, workers=args.workers)
    show_progress = len(paths) >= _PROGRESS_MIN and err.isatty() if hasattr(err, "isatty") else False
    name_width = min(60, max(len(p) for p in paths))
    if not args.json:
        header = f"{'file':<{name_width}}  " + (
            f"{'verdict':<8} {'top class':<26} {'conf':>6}  {'p(' + blur_type + ')'}" if blur_type
            else f"{'top class':<26} {'conf':>6}"
        )
        out.write(header + "\n")
    failed = flagged = 0
    start = time.perf_counter()
    for i, r in enumerate(results, 1):
        failed += not r.ok
        flagged += bool(r.detected)
        out.write((json.dumps(r.to_dict(), ensure_ascii=False) if args.json else _table_row(r, name_width)) + "\n")
        if show_progress:
            _progress(i, len(paths), start, err)
    out.flush()
    if not args.json:
        summary = f"{len(paths)} images, {failed} unreadable"
        if blur_type:
            summary += f", {flagged} flagged as {blur_type}"
        err.write(summary + "\n")
    return EXIT_UNREADABLE if failed else EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of `blurflag`; returns the exit status (0 ok, 1 some unreadable, 2 usage error)."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 for --help/--version
        return int(exc.code or 0)
    try:
        if args.self_test:
            from engine.selftest import run_self_test

            return run_self_test(out=out)
        if args.command != "classify":
            parser.print_help(err)
            return EXIT_USAGE
        return _run_classify(args, out, err)
    except (_UsageError, InvalidBlurTypeError) as exc:
        err.write(f"blurflag: error: {exc}\n")
        return EXIT_USAGE
    except ModelLoadError as exc:
        err.write(f"blurflag: cannot load the model: {exc}\n")
        return EXIT_USAGE
    except EngineError as exc:
        err.write(f"blurflag: error: {exc}\n")
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        err.write("\nblurflag: interrupted\n")
        return 130
    except BrokenPipeError:  # `blurflag classify ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
