"""Entry point of `blurflag-app`: parse the command line and run the main window."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    settings = S.Settings(args.settings, args.data_dir)
    window = MainWindow(settings, model_dir=args.model)
    window.show()
    code = app.exec()
    window.shutdown()
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
