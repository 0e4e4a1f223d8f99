"""XMP sidecars and embedded XMP: standard packets, merging without loss, byte-exact and atomic JPEG edits."""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.xmp import (
    JPEG_XMP_HEADER,
    XMP_NS,
    XmpError,
    blur_label,
    embed_xmp_jpeg,
    read_embedded_xmp,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
XMP = "{" + XMP_NS + "}"

LIGHTROOM_SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <!-- written by a photo manager -->
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    photoshop:DateCreated="2024-05-01T09:12:33.42"
    crs:Exposure2012="+0.35"
    crs:WhiteBalance="As Shot">
   <xmp:Rating>4</xmp:Rating>
   <xmp:Label>Red</xmp:Label>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>marathon</rdf:li>
     <rdf:li>finish line &amp; crowd</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Rating="2"
    darktable:xmp_version="5"
    darktable:history_end="1">
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def triples(xml: bytes | str) -> set[tuple[str, tuple[tuple[str, str], ...], str]]:
    """Every element of an XMP document as (tag, attributes, text), to compare documents property by property."""
    root = ET.fromstring(xml)
    return {
        (el.tag, tuple(sorted(el.attrib.items())), (el.text or "").strip())
        for el in root.iter()
        if isinstance(el.tag, str)
    }


def xmp_values(xml: bytes | str) -> dict[str, str]:
    """Rating and Label as a plain XML parser sees them (attribute or element form)."""
    root = ET.fromstring(xml)
    out: dict[str, str] = {}
    for desc in root.iter(RDF + "Description"):
        for key in ("Rating", "Label"):
            if XMP + key in desc.attrib:
                out[key] = desc.attrib[XMP + key]
            child = desc.find(XMP + key)
            if child is not None:
                out[key] = (child.text or "").strip()
    return out


def without_rating_label(items: set[tuple[str, tuple[tuple[str, str], ...], str]]) -> set[object]:
    out: set[object] = set()
    for tag, attrs, text in items:
        if tag in (XMP + "Rating", XMP + "Label"):
            continue
        out.add((tag, tuple((k, v) for k, v in attrs if k not in (XMP + "Rating", XMP + "Label")), text))
    return out


def test_blur_labels() -> None:
    assert blur_label("sharp") == ""
    assert blur_label("motion_blurred") == "Blur: motion"
    assert blur_label("defocused_blurred") == "Blur: out of focus"
    assert blur_label("defocused_object_portrait") == "Blur: subject soft"
    assert blur_label("camera_shake") == "Blur: camera shake"


def test_new_sidecar_is_a_standard_packet(tmp_path: Path) -> None:
    image = tmp_path / "IMG_0001.JPG"
    image.write_bytes(b"not read")
    path = write_sidecar(image, 1, "Blur: motion")
    assert path == tmp_path / "IMG_0001.xmp"
    root = ET.fromstring(path.read_bytes())
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    rdf = root.find(RDF + "RDF")
    assert rdf is not None
    (desc,) = rdf.findall(RDF + "Description")
    assert desc.attrib[RDF + "about"] == ""
    assert desc.attrib[XMP + "Rating"] == "1" and desc.attrib[XMP + "Label"] == "Blur: motion"
    assert 'xmlns:xmp="http://ns.adobe.com/xap/1.0/"' in path.read_text()
    assert read_sidecar(image) == {"xmp:Rating": "1", "xmp:Label": "Blur: motion"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_0001.JPG", "IMG_0001.xmp"], (
        "no temp files left"
    )
    assert read_sidecar(tmp_path / "other.jpg") == {}
    write_sidecar(tmp_path / "sharp.jpg", None, "")  # nothing to clear: no sidecar is created
    assert not (tmp_path / "sharp.xmp").exists()
    before = path.stat()
    write_sidecar(image, 1, "Blur: motion")
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (before.st_mtime_ns, before.st_ino)


def test_merging_keeps_every_other_property(tmp_path: Path) -> None:
    image = tmp_path / "race.jpg"
    sidecar = tmp_path / "race.xmp"
    sidecar.write_text(LIGHTROOM_SIDECAR, encoding="utf-8")
    before = triples(LIGHTROOM_SIDECAR)
    assert read_sidecar(image) == {"xmp:Rating": "4", "xmp:Label": "Red"}
    write_sidecar(image, 1, "Blur: subject soft")
    after = sidecar.read_bytes()
    assert xmp_values(after) == {"Rating": "1", "Label": "Blur: subject soft"}
    assert without_rating_label(triples(after)) == without_rating_label(before)
    text = after.decode("utf-8")
    for kept in (
        "crs:Exposure2012",
        "photoshop:DateCreated",
        "<dc:subject>",
        "<!-- written by a photo manager -->",
    ):
        assert kept in text, f"{kept} lost"
    assert text.count("Rating") == 1 and text.count(":Label") == 1, "no duplicate properties"
    write_sidecar(image, None, None)  # nothing asked: nothing changes
    assert sidecar.read_bytes() == after
    write_sidecar(image, 0, None)
    assert read_sidecar(image) == {"xmp:Rating": "0", "xmp:Label": "Blur: subject soft"}


def test_clearing_removes_only_blurflag_labels(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    write_sidecar(image, 1, blur_label("motion_blurred"))
    write_sidecar(image, None, "")  # the photo turned out sharp
    assert read_sidecar(image) == {"xmp:Rating": "1"}
    (tmp_path / "b.xmp").write_text(LIGHTROOM_SIDECAR, encoding="utf-8")
    write_sidecar(tmp_path / "b.jpg", None, "")
    assert read_sidecar(tmp_path / "b.jpg") == {"xmp:Rating": "4", "xmp:Label": "Red"}, (
        "the user's label stays"
    )


def test_darktable_style_sidecar_is_updated(tmp_path: Path) -> None:
    image = tmp_path / "DSC_1234.NEF.jpg"
    dt = tmp_path / "DSC_1234.NEF.jpg.xmp"
    dt.write_text(DARKTABLE_SIDECAR, encoding="utf-8")
    assert sidecar_path(image) == dt
    assert write_sidecar(image, -1, "Blur: motion") == dt
    assert not (tmp_path / "DSC_1234.NEF.xmp").exists()
    data = dt.read_bytes()
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert xmp_values(data) == {"Rating": "-1", "Label": "Blur: motion"}
    assert without_rating_label(triples(data)) == without_rating_label(triples(DARKTABLE_SIDECAR))


def test_bad_input_is_refused_and_left_alone(tmp_path: Path) -> None:
    image = tmp_path / "x.jpg"
    broken = tmp_path / "x.xmp"
    broken.write_text("<x:xmpmeta><unclosed>", encoding="utf-8")
    with pytest.raises(XmpError, match="not valid XMP"):
        write_sidecar(image, 1, "Blur: motion")
    assert broken.read_text(encoding="utf-8") == "<x:xmpmeta><unclosed>"
    with pytest.raises(XmpError):
        read_sidecar(image)
    broken.write_text("<notxmp/>", encoding="utf-8")
    with pytest.raises(XmpError, match="rdf:RDF"):
        write_sidecar(image, 1, None)
    for rating in (6, -2):
        with pytest.raises(ValueError, match="rating"):
            write_sidecar(tmp_path / "y.jpg", rating, None)
    assert not (tmp_path / "y.xmp").exists()


# -- embedded XMP ---------------------------------------------------------------------------


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def split_jpeg(data: bytes) -> tuple[list[bytes], bytes]:
    """Marker segments up to the first SOS (exclusive), and everything from SOS to the end."""
    assert data[:2] == b"\xff\xd8"
    segs, pos = [], 2
    while data[pos + 1] != 0xDA:
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segs.append(data[pos : pos + 2 + length])
        pos += 2 + length
    return segs, data[pos:]


def is_xmp(seg: bytes) -> bool:
    return seg[1] == 0xE1 and seg[4:].startswith(JPEG_XMP_HEADER)


def rich_jpeg(path: Path, extra: list[bytes] | None = None) -> bytes:
    """A JPEG with JFIF, Exif, an ICC profile, IPTC (APP13), a comment and any `extra` segments."""
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x010F] = "NIKON CORPORATION"
    exif[0x0110] = "NIKON D3400"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif, icc_profile=b"fake icc profile bytes " * 20, comment=b"hi")
    data = buf.getvalue()
    segs, rest = split_jpeg(data)
    iptc = segment(
        0xED, b"Photoshop 3.0\x00" + b"8BIM\x04\x04\x00\x00\x00\x00\x00\x0c\x1c\x02\x05\x00\x07Marathon"
    )
    data = b"\xff\xd8" + b"".join(segs) + iptc + b"".join(extra or []) + rest
    path.write_bytes(data)
    return data


def test_embedding_changes_nothing_but_the_xmp_packet(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    original = rich_jpeg(path)
    pixels = np.asarray(Image.open(path))
    assert read_embedded_xmp(path) == {}
    embed_xmp_jpeg(path, 1, "Blur: motion")
    data = path.read_bytes()
    before_segs, before_scan = split_jpeg(original)
    after_segs, after_scan = split_jpeg(data)
    assert after_scan == before_scan, "entropy-coded data and everything after it are byte-identical"
    assert [s for s in after_segs if not is_xmp(s)] == before_segs, "every other segment, in order"
    (packet,) = [s for s in after_segs if is_xmp(s)]
    assert after_segs.index(packet) == 2, "right after JFIF (APP0) and Exif (APP1)"
    assert read_embedded_xmp(path) == {"xmp:Rating": "1", "xmp:Label": "Blur: motion"}
    with Image.open(path) as img:
        assert img.getexif()[0x010F] == "NIKON CORPORATION"
        assert img.info["icc_profile"] == b"fake icc profile bytes " * 20
        assert b"Blur: motion" in img.info["xmp"]
        assert np.array_equal(np.asarray(img), pixels)
    size = len(data)
    embed_xmp_jpeg(path, 3, None)  # a second edit fits in the packet's padding: same size, same place
    again = path.read_bytes()
    assert len(again) == size
    segs2, scan2 = split_jpeg(again)
    assert scan2 == before_scan and [s for s in segs2 if not is_xmp(s)] == before_segs
    assert read_embedded_xmp(path) == {"xmp:Rating": "3", "xmp:Label": "Blur: motion"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"], "no temporary files left behind"
    stat = path.stat()
    embed_xmp_jpeg(path, 3, "Blur: motion")  # already so: the file is not rewritten
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    embed_xmp_jpeg(path, None, "")  # removes the Blur label
    assert read_embedded_xmp(path) == {"xmp:Rating": "3"}
    stat = path.stat()
    embed_xmp_jpeg(path, 3, None)
    embed_xmp_jpeg(path, None, "")
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino), (
        "no-op edits write nothing"
    )


def test_an_existing_packet_is_merged_in_place(tmp_path: Path) -> None:
    xml = LIGHTROOM_SIDECAR.encode("utf-8")
    packet = b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + xml + b"\n" + b" " * 3000
    packet += b'<?xpacket end="w"?>'
    extended = segment(0xE1, b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + b"extended data")
    path = tmp_path / "lr.jpg"
    rich_jpeg(path, [segment(0xE1, JPEG_XMP_HEADER + packet), extended])
    original = path.read_bytes()
    embed_xmp_jpeg(path, 1, "Blur: out of focus")
    data = path.read_bytes()
    assert len(data) == len(original), "the packet's padding absorbed the change"
    old_segs, old_scan = split_jpeg(original)
    new_segs, new_scan = split_jpeg(data)
    assert new_scan == old_scan
    assert [s for s in new_segs if not is_xmp(s)] == [s for s in old_segs if not is_xmp(s)]
    assert [i for i, s in enumerate(new_segs) if is_xmp(s)] == [
        i for i, s in enumerate(old_segs) if is_xmp(s)
    ]
    (new_packet,) = [s[4 + len(JPEG_XMP_HEADER) :] for s in new_segs if is_xmp(s)]
    body = new_packet[new_packet.index(b"<x:xmpmeta") : new_packet.index(b"</x:xmpmeta>") + 12]
    assert xmp_values(body) == {"Rating": "1", "Label": "Blur: out of focus"}
    assert without_rating_label(triples(body)) == without_rating_label(triples(xml))
    assert new_packet.startswith(b"<?xpacket begin=") and new_packet.endswith(b'<?xpacket end="w"?>')


def test_embedding_refuses_bad_files_and_never_leaves_half_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(XmpError, match="not a JPEG"):
        embed_xmp_jpeg(png, 1, "Blur: motion")
    with pytest.raises(XmpError, match="not a JPEG"):
        read_embedded_xmp(png)
    path = tmp_path / "b.jpg"
    original = rich_jpeg(path)
    truncated = tmp_path / "c.jpg"
    truncated.write_bytes(original[:30])
    with pytest.raises(XmpError, match="damaged"):
        embed_xmp_jpeg(truncated, 1, None)
    assert truncated.read_bytes() == original[:30]

    def failing_replace(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(XmpError, match="No space left"):
        embed_xmp_jpeg(path, 1, "Blur: motion")
    monkeypatch.undo()
    assert path.read_bytes() == original, "the original is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg", "c.jpg"], "temp file removed"


def test_a_multi_picture_file_is_not_shifted_under_its_index(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    data = rich_jpeg(path)
    segs, scan = split_jpeg(data)
    mpf = segment(0xE2, b"MPF\x00II*\x00" + b"\x00" * 20)
    tiny = segment(0xE1, JPEG_XMP_HEADER + b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="'
                   b'http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>')  # fmt: skip
    path.write_bytes(b"\xff\xd8" + segs[0] + mpf + tiny + b"".join(segs[1:]) + scan)
    before = path.read_bytes()
    with pytest.raises(XmpError, match="multi-picture"):
        embed_xmp_jpeg(path, 1, "Blur: motion")
    assert path.read_bytes() == before
