"""Entry point of `blurflag-app`: parse the command line and run the main window."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import Any


def _parser() -> argparse.ArgumentParser:
    from engine import __version__

    p = argparse.ArgumentParser(prog="blurflag-app", description="BlurFlag: cull blurred photos, offline.")
    p.add_argument("--self-test", action="store_true",
                   help="load the bundled model, classify the bundled samples, exit 0 when all is well")
    p.add_argument("--model", metavar="DIR", help="use this model folder for this session")
    p.add_argument("--settings", metavar="FILE", help="settings INI file (portable use, tests)")
    p.add_argument("--data-dir", metavar="DIR", help="app data folder (result database, trained models)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def collect_garbage_on_gui_thread(parent: Any) -> Any:
    """Run Python's cyclic GC from a GUI-thread timer only, and return the timer.

    Automatic collection runs in whichever thread happens to allocate; when it frees Qt objects from a worker
    thread (inference, watcher, thumbnails), Qt crashes. So automatic GC is off and the GUI thread collects
    whenever the usual thresholds say so.
    """
    from PySide6.QtCore import QTimer

    gc.disable()

    def collect() -> None:
        counts, thresholds = gc.get_count(), gc.get_threshold()
        if counts[0] > thresholds[0]:
            generation = 2 if counts[2] > thresholds[2] else 1 if counts[1] > thresholds[1] else 0
            gc.collect(generation)

    timer = QTimer(parent)
    timer.setInterval(500)
    timer.timeout.connect(collect)
    timer.start()
    return timer


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app (or the self-test) and return the exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.self_test:
        from engine.selftest import run_self_test

        return int(run_self_test())

    from PySide6.QtWidgets import QApplication

    from desktop import settings as S
    from desktop.main_window import APP_TITLE, MainWindow

    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication([sys.argv[0] if sys.argv else "blurflag-app"])
    app.setOrganizationName(S.ORGANIZATION)
    app.setApplicationName(S.APPLICATION)
    app.setApplicationDisplayName(APP_TITLE)
    gc_timer = collect_garbage_on_gui_thread(app)
    settings = S.Settings(args.settings, args.data_dir)
    window = MainWindow(settings, model_dir=args.model)
    window.show()
    code = app.exec()
    window.shutdown()
    gc_timer.stop()
    gc.enable()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
