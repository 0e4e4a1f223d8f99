"""Finding the trainer for the packaged app: a separate Python environment that has the `train` extra.

The packaged app holds no torch or ultralytics (they would quadruple it). `install-trainer.sh` (from
`scripts/install_trainer.sh`) installs BlurFlag's trainer once into a virtual environment in the app
data folder, `<data dir>/trainer`; the app finds it there (or at a Python the user chose), checks it in
a subprocess and runs `python -m trainer.cli` from it. Run from a checkout, the running interpreter is
a candidate too. Nothing here imports Qt or the trainer: the trainer only ever runs in its own process.

The packaged app's `blurflag-train` executable is `main()`: it forwards its arguments to the trainer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from engine.paths import IS_FROZEN, bundle_root

#: Folder name under the platform's data location; the same as Qt's GenericDataLocation + "BlurFlag"
#: that `desktop.settings.default_data_dir()` uses.
APP_DIR_NAME = "BlurFlag"
#: The trainer environment's folder inside the app data folder.
TRAINER_DIR_NAME = "trainer"
INSTALL_HINT = (
    "Install the trainer once (it needs Python 3.11 and downloads torch and ultralytics, about 3 GB, "
    "or installs them from a wheelhouse folder): run install-trainer.sh from the BlurFlag folder; "
    "see the README, 'Run BlurFlag'."
)
#: Printed by the probe as one JSON line; `import trainer` is cheap (no torch, no ultralytics).
_PROBE = """\
import json, sys
out = {"python": sys.version.split()[0], "version": None}
try:
    import trainer
    out["ok"], out["message"] = trainer.available()
except Exception as exc:
    out["ok"], out["message"] = False, "no BlurFlag trainer in this Python (%s)" % exc
try:
    from importlib.metadata import version
    out["version"] = version("blurflag")
except Exception:
    pass
print(json.dumps(out))
"""
#: Variables the PyInstaller bootloader sets for the frozen app; a foreign Python must not inherit them.
_FROZEN_ONLY_PREFIXES = ("_PYI_", "_MEIPASS")
_RESTORED = ("LD_LIBRARY_PATH", "LIBPATH", "DYLD_LIBRARY_PATH")
_PATH_LISTS = ("PATH", "LD_LIBRARY_PATH", "LIBPATH", "DYLD_LIBRARY_PATH", "QT_PLUGIN_PATH", "QML2_IMPORT_PATH")


@dataclass(frozen=True)
class TrainerEnv:
    """A Python interpreter that may run `python -m trainer.cli`, and where it was found."""

    python: Path
    origin: str  # "configured", "installed" or "current"

    @property
    def isolated(self) -> bool:
        """Whether to run it with `-I` (a separate environment: ignore PYTHONPATH, user site and cwd)."""
        return self.origin != "current"

    def command(self, args: Sequence[str]) -> list[str]:
        """The command line running `trainer.cli` with `args` in this environment."""
        return [str(self.python), *(["-I"] if self.isolated else []), "-m", "trainer.cli", *args]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (e.g. os.environ) cleaned for this interpreter: no frozen-app library paths, UTF-8, unbuffered."""
        env = subprocess_environment(base)
        if self.origin == "current" and not IS_FROZEN:  # a checkout: `trainer` importable from any folder
            root = str(bundle_root())
            old = env.get("PYTHONPATH", "")
            env["PYTHONPATH"] = root + (os.pathsep + old if old else "")
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        return env


@dataclass(frozen=True)
class TrainerStatus:
    """Whether training is possible, with which environment, and a message for the user."""

    ok: bool
    message: str
    env: TrainerEnv | None = None
    version: str | None = None  # the BlurFlag version installed in the trainer environment


def platform_data_dir(environ: Mapping[str, str], home: Path, platform: str = sys.platform) -> Path:
    """BlurFlag's per-user data folder, as Qt's GenericDataLocation names it on each platform."""
    if platform == "win32":
        base = Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / APP_DIR_NAME


def default_trainer_dir(data_dir: Path) -> Path:
    """Where `install-trainer.sh` puts the trainer environment for this data folder."""
    return Path(data_dir) / TRAINER_DIR_NAME


def venv_python(prefix: Path, platform: str = sys.platform) -> Path:
    """The interpreter of the virtual environment at `prefix`."""
    if platform == "win32":
        return Path(prefix) / "Scripts" / "python.exe"
    return Path(prefix) / "bin" / "python"


def subprocess_environment(base: Mapping[str, str], bundle: Path | None = None) -> dict[str, str]:
    """A copy of `base` without what the frozen app's bootloader and runtime hooks set for itself.

    PyInstaller's bootloader may point LD_LIBRARY_PATH (DYLD_* on macOS) at the bundle's own libraries,
    keeping the user's value in `<NAME>_ORIG`, and its Qt hook points QT_PLUGIN_PATH (and PATH on
    Windows) into the bundle: torch in another Python must load its own libraries, not the bundle's.

    Args:
        base: the environment to clean, e.g. os.environ.
        bundle: the frozen app's folder; entries under it are dropped (default: this app's, when frozen).
    """
    if bundle is None and IS_FROZEN:
        bundle = bundle_root()
    env = {k: v for k, v in base.items() if not k.startswith(_FROZEN_ONLY_PREFIXES)}
    for name in _RESTORED:
        original = env.pop(name + "_ORIG", None)
        if original is not None:
            env[name] = original
    if bundle is not None:
        for name in _PATH_LISTS:
            if name not in env:
                continue
            kept = [e for e in env[name].split(os.pathsep) if e and not _inside(Path(e), bundle)]
            if kept:
                env[name] = os.pathsep.join(kept)
            else:
                del env[name]
    return env


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def candidates(data_dir: Path | None, configured: str | Path | None = None,
               include_current: bool = not IS_FROZEN) -> list[TrainerEnv]:
    """Interpreters to try, best first: the configured one, the installed environment, this Python."""
    found: list[TrainerEnv] = []
    if configured:
        path = Path(configured).expanduser()
        found.append(TrainerEnv(venv_python(path) if path.is_dir() else path, "configured"))
    if data_dir is not None:
        found.append(TrainerEnv(venv_python(default_trainer_dir(data_dir)), "installed"))
    if include_current and sys.executable:
        found.append(TrainerEnv(Path(sys.executable), "current"))
    return found


def probe(env: TrainerEnv, base_environ: Mapping[str, str] | None = None, timeout: float = 60.0) -> TrainerStatus:
    """Check in a subprocess that `env` can import the trainer, torch and ultralytics (without importing them)."""
    if not env.python.is_file():
        return TrainerStatus(False, f"{env.python} does not exist", env)
    try:
        proc = subprocess.run(
            [str(env.python), *(["-I"] if env.isolated else []), "-c", _PROBE],
            check=False, capture_output=True, text=True, timeout=timeout,
            env=env.environment(os.environ if base_environ is None else base_environ),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return TrainerStatus(False, f"cannot run {env.python}: {exc}", env)
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if proc.returncode != 0 or not isinstance(answer, dict):
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return TrainerStatus(False, f"{env.python} is not a usable Python ({detail})", env)
    version = answer.get("version")
    return TrainerStatus(bool(answer.get("ok")), str(answer.get("message", "")), env,
                         str(version) if version else None)


def find_trainer(data_dir: Path | None, configured: str | Path | None = None,
                 include_current: bool = not IS_FROZEN, base_environ: Mapping[str, str] | None = None,
                 timeout: float = 60.0) -> TrainerStatus:
    """The first candidate that can train, or a status that says what was tried and how to install."""
    tried: list[str] = []
    for env in candidates(data_dir, configured, include_current):
        status = probe(env, base_environ, timeout)
        if status.ok:
            return status
        tried.append(f"{env.origin} {env.python}: {status.message}")
    listing = "; ".join(tried) if tried else "no candidate"
    return TrainerStatus(False, f"Training is not installed (tried {listing}). {INSTALL_HINT}")


_LAUNCHER_HELP = """\
usage: blurflag-train [--trainer-python PYTHON] [--data-dir DIR] (--status | TRAINER ARGUMENTS...)

The packaged app's trainer launcher: runs `python -m trainer.cli TRAINER ARGUMENTS` in the trainer
environment that install-trainer.sh made (DATA_DIR/trainer), or in PYTHON.
  --status               say which trainer would run, exit 0 if training is available
  --trainer-python PATH  a Python (or a virtual environment folder) with the BlurFlag trainer
  --data-dir DIR         BlurFlag's data folder (default: the platform's, as the app uses)
Trainer arguments: see `blurflag-train --help-trainer` once the trainer is installed.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """`blurflag-train` in the packaged app: forward to the trainer environment; 3 when there is none."""
    args = list(sys.argv[1:] if argv is None else argv)
    configured: str | None = None
    data_dir = platform_data_dir(os.environ, Path.home())
    status_only = False
    while args and args[0] in ("--trainer-python", "--data-dir", "--status", "-h", "--help", "--help-trainer"):
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            sys.stdout.write(_LAUNCHER_HELP)
            return 0
        if flag == "--help-trainer":
            args = ["--help"]
            break
        if flag == "--status":
            status_only = True
            continue
        if not args:
            sys.stderr.write(f"blurflag-train: {flag} needs a value\n")
            return 2
        value = args.pop(0)
        if flag == "--trainer-python":
            configured = value
        else:
            data_dir = Path(value).expanduser()
    status = find_trainer(data_dir, configured, include_current=not IS_FROZEN)
    if status_only:
        where = f" ({status.env.origin}: {status.env.python}, BlurFlag {status.version})" if status.env else ""
        sys.stdout.write(("trainer available" if status.ok else "trainer NOT available") + where + "\n")
        if not status.ok:
            sys.stdout.write(status.message + "\n")
        return 0 if status.ok else 3
    if not status.ok or status.env is None:
        sys.stderr.write(status.message + "\n")
        return 3
    if not args:
        sys.stderr.write(_LAUNCHER_HELP)
        return 2
    return _run_forwarding_signals(status.env.command(args), status.env.environment(os.environ))


def _run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd`, passing SIGTERM/SIGINT on so the trainer stops between batches; return its exit code."""
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
