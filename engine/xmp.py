"""Writing blur verdicts where photo managers look: XMP sidecars and (opt-in) embedded XMP in JPEGs.

Lightroom Classic, Capture One, darktable and digiKam all read ``xmp:Rating`` and ``xmp:Label``
from a standard ``x:xmpmeta/rdf:RDF/rdf:Description`` packet, in a sidecar beside the photo or in
the JPEG's XMP APP1 segment. Existing packets are edited, never replaced: every other property,
namespace prefix, comment and processing instruction is kept.

BlurFlag's choice: a blurred photo gets ``BLUR_RATING`` (1 star) and a label naming the blur
(`blur_label`). One star rather than Lightroom's "rejected" (-1): every one of the four programs
shows and filters 1 star, while -1 is a reject flag only in Lightroom and darktable (Capture One and
digiKam treat it as no rating), and a low star count is easy to undo. ``REJECT_RATING`` is there
for users who want Lightroom's reject flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.dom import minidom
from xml.parsers.expat import ExpatError

from engine import __version__
from engine.errors import EngineError
from engine.fileio import atomic_write

XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
X_NS = "adobe:ns:meta/"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"
#: APP1 payload prefix of the standard XMP packet in JPEG (extended XMP uses another one and is kept as is).
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
BLUR_RATING = 1
REJECT_RATING = -1
LABEL_PREFIX = "Blur: "
_LABELS = {
    "motion_blurred": "Blur: motion",
    "defocused_blurred": "Blur: out of focus",
    "defocused_object_portrait": "Blur: subject soft",
}
_PADDING = 2048  # spare bytes in a new embedded packet, so later edits fit in place
_MAX_SEGMENT = 65535 - 2


class XmpError(EngineError):
    """A sidecar or JPEG cannot be read or updated; nothing was changed."""


def blur_label(top_class: str) -> str:
    """The ``xmp:Label`` text for a predicted class ("Blur: motion", ...); "" for sharp."""
    if top_class == "sharp":
        return ""
    return _LABELS.get(top_class, LABEL_PREFIX + top_class.replace("_", " "))


def sidecar_path(image_path: str | Path) -> Path:
    """Where the sidecar of `image_path` is: an existing ``name.ext.xmp`` (darktable), else ``name.xmp``."""
    image = Path(image_path)
    for candidate in (image.with_name(image.name + ".xmp"), image.with_name(image.name + ".XMP")):
        if candidate.is_file():
            return candidate
    for candidate in (image.with_suffix(".xmp"), image.with_suffix(".XMP")):
        if candidate.is_file():
            return candidate
    return image.with_suffix(".xmp")


def write_sidecar(image_path: str | Path, rating: int | None, label: str | None) -> Path:
    """Set rating and label in the image's sidecar, creating it or merging into it.

    Args:
        image_path: the photo.
        rating: -1 (rejected) to 5; None leaves the rating as it is.
        label: the label text; None leaves it; "" removes a BlurFlag label (one starting with
            "Blur: ") but keeps a label the user chose.

    Returns:
        The sidecar path.

    Raises:
        XmpError: the existing sidecar is not valid XMP (it is left untouched) or cannot be written.
        ValueError: `rating` is out of range.
    """
    _check_rating(rating)
    path = sidecar_path(image_path)
    old: bytes | None = None
    if path.is_file():
        try:
            old = path.read_bytes()
        except OSError as exc:
            raise XmpError(f"cannot read {path}: {exc.strerror or exc}") from None
    if rating is None and label is None:
        return path
    doc, changed = _merge(old if old and old.strip() else None, rating, label, str(path))
    if not changed:
        return path
    head = b'<?xml version="1.0" encoding="UTF-8"?>\n' if old and old.lstrip().startswith(b"<?xml") else b""
    body = head + b"\n".join(node.toxml().encode("utf-8") for node in doc.childNodes) + b"\n"
    _atomic_write(path, body, mode_from=path if old is not None else Path(image_path))
    return path


def read_sidecar(image_path: str | Path) -> dict[str, str]:
    """``xmp:Rating`` and ``xmp:Label`` from the image's sidecar (only those present; {} without a sidecar).

    Raises:
        XmpError: the sidecar is not valid XMP.
    """
    path = sidecar_path(image_path)
    if not path.is_file():
        return {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise XmpError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _read(_parse(data, str(path))) if data.strip() else {}


# -- embedded XMP in JPEG -------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    marker: int
    start: int  # offset of the FF marker byte
    end: int  # offset just past the segment

    def payload(self, data: bytes) -> bytes:
        return data[self.start + 4 : self.end]


def _jpeg_segments(data: bytes, name: str) -> list[_Segment]:
    """The marker segments between SOI and the first SOS (which is included, header only)."""
    if data[:2] != b"\xff\xd8":
        raise XmpError(f"{name} is not a JPEG file")
    segments: list[_Segment] = []
    pos = 2
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise XmpError(f"{name}: damaged JPEG structure at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise XmpError(f"{name}: damaged JPEG segment at byte {pos}")
        segments.append(_Segment(marker, pos, end))
        if marker == 0xDA:
            return segments
        pos = end


def _is_xmp(segment: _Segment, data: bytes) -> bool:
    return segment.marker == 0xE1 and segment.payload(data).startswith(JPEG_XMP_HEADER)


def read_embedded_xmp(image_path: str | Path) -> dict[str, str]:
    """``xmp:Rating`` and ``xmp:Label`` from a JPEG's own XMP packet ({} when it has none).

    Raises:
        XmpError: not a JPEG, or the packet is not valid XMP.
    """
    path = Path(image_path)
    data = _read_file(path)
    for seg in _jpeg_segments(data, str(path)):
        if _is_xmp(seg, data):
            return _read(_parse(seg.payload(data)[len(JPEG_XMP_HEADER) :], str(path)))
    return {}


def embed_xmp_jpeg(image_path: str | Path, rating: int | None, label: str | None) -> None:
    """Set rating and label inside a JPEG's XMP packet; opt-in, atomic, every other byte kept.

    An existing packet is edited in place (its padding absorbs the change, so the file keeps its
    size when it fits); otherwise a new APP1 packet goes right after the JFIF/Exif segments. The
    new file is written beside the original, synced, and swapped in with `os.replace`.

    Raises:
        XmpError: not a JPEG, a damaged one, an unreadable packet, or the file cannot be replaced.
        ValueError: `rating` is out of range.
    """
    _check_rating(rating)
    path = Path(image_path)
    data = _read_file(path)
    segments = _jpeg_segments(data, str(path))
    if rating is None and label is None:
        return
    existing = next((s for s in segments if _is_xmp(s, data)), None)
    old_packet = existing.payload(data)[len(JPEG_XMP_HEADER) :] if existing else None
    doc, changed = _merge(old_packet, rating, label, str(path))
    if not changed:
        return
    packet = _packet(doc, len(old_packet) if old_packet is not None else None)
    segment = (
        b"\xff\xe1" + (2 + len(JPEG_XMP_HEADER) + len(packet)).to_bytes(2, "big") + JPEG_XMP_HEADER + packet
    )
    if len(segment) - 2 > _MAX_SEGMENT:
        raise XmpError(f"{path}: the XMP packet would exceed the 64 KB JPEG segment limit")
    if existing is not None:
        start, end = existing.start, existing.end
    else:
        start = end = 2
        for seg in segments:  # after the leading JFIF (APP0) and Exif (APP1) segments
            if seg.marker not in (0xE0, 0xE1):
                break
            start = end = seg.end
    # MPO: the MP index (APP2 "MPF") locates the later pictures relative to itself; a change in
    # size before it moves both alike, but one after it would leave the offsets pointing wrong.
    if end - start != len(segment) and any(
        s.marker == 0xE2 and s.payload(data).startswith(b"MPF\x00") and s.end <= start for s in segments
    ):
        raise XmpError(f"{path}: a multi-picture (MPO) file whose XMP lies after its MP index cannot grow")
    _atomic_write(path, data[:start] + segment + data[end:], mode_from=path)


def _packet(doc: minidom.Document, fit: int | None) -> bytes:
    """Serialize as an XMP packet with trailing padding; exactly `fit` bytes long when that is possible."""
    begin = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    nodes = [
        n
        for n in doc.childNodes
        if not (isinstance(n, minidom.ProcessingInstruction) and n.target == "xpacket")
    ]
    body = (begin + "\n" + "\n".join(n.toxml() for n in nodes) + "\n").encode("utf-8")
    end = b'<?xpacket end="w"?>'
    spare = _PADDING
    if fit is not None and len(body) + len(end) <= fit:
        spare = fit - len(body) - len(end)
    padding = bytearray(b" " * spare)
    for i in range(99, spare, 100):
        padding[i] = 0x0A  # newline every 100 bytes, as Adobe writes padding
    return body + bytes(padding) + end


# -- XML merging ----------------------------------------------------------------------------


def _check_rating(rating: int | None) -> None:
    if rating is not None and not (isinstance(rating, int) and -1 <= rating <= 5):
        raise ValueError(f"rating must be -1 (rejected) to 5, got {rating!r}")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise XmpError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(data: bytes, name: str) -> minidom.Document:
    try:
        doc = minidom.parseString(data.rstrip(b"\x00"))
    except (ExpatError, ValueError) as exc:
        raise XmpError(f"{name} is not valid XMP: {exc}") from None
    if not doc.getElementsByTagNameNS(RDF_NS, "RDF"):
        raise XmpError(f"{name} is not valid XMP: no rdf:RDF element")
    return doc


def _new_document() -> minidom.Document:
    text = (
        f'<x:xmpmeta xmlns:x="{X_NS}" x:xmptk="BlurFlag {__version__}">\n'
        f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
        f'  <rdf:Description rdf:about="" xmlns:xmp="{XMP_NS}"/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>"
    )
    return minidom.parseString(text)


def _occurrences(
    rdf: minidom.Element, local: str
) -> list[tuple[minidom.Element, minidom.Attr | minidom.Element]]:
    """Every xmp:`local` under `rdf`, as attributes or property elements, with their description."""
    found: list[tuple[minidom.Element, minidom.Attr | minidom.Element]] = []
    for desc in rdf.getElementsByTagNameNS(RDF_NS, "Description"):
        for attr in list(desc.attributes.values()):
            if attr.namespaceURI == XMP_NS and attr.localName == local:
                found.append((desc, attr))
        for child in desc.childNodes:
            if (
                isinstance(child, minidom.Element)
                and child.namespaceURI == XMP_NS
                and child.localName == local
            ):
                found.append((desc, child))
    return found


def _value(node: minidom.Attr | minidom.Element) -> str:
    if isinstance(node, minidom.Attr):
        return str(node.value)
    return "".join(t.data for t in node.childNodes if isinstance(t, minidom.Text)).strip()


def _read(doc: minidom.Document) -> dict[str, str]:
    out: dict[str, str] = {}
    rdf = doc.getElementsByTagNameNS(RDF_NS, "RDF")[0]
    for local in ("Rating", "Label"):
        hits = _occurrences(rdf, local)
        if hits:
            out[f"xmp:{local}"] = _value(hits[0][1])
    return out


def _prefix_in_scope(node: minidom.Node, uri: str) -> str | None:
    current: minidom.Node | None = node
    while isinstance(current, minidom.Element):
        for attr in current.attributes.values():
            if attr.name.startswith("xmlns:") and attr.value == uri:
                return str(attr.name[6:])
        current = current.parentNode
    return None


def _bound(node: minidom.Node, prefix: str) -> bool:
    current: minidom.Node | None = node
    while isinstance(current, minidom.Element):
        if current.hasAttribute(f"xmlns:{prefix}"):
            return True
        current = current.parentNode
    return False


def _merge(
    old: bytes | None, rating: int | None, label: str | None, name: str
) -> tuple[minidom.Document, bool]:
    """`old` (or a new document) with rating and label set as ``xmp:`` attributes; and whether that changed it."""
    doc = _parse(old, name) if old is not None else _new_document()
    rdf = doc.getElementsByTagNameNS(RDF_NS, "RDF")[0]
    updates: dict[str, str | None] = {}
    if rating is not None:
        updates["Rating"] = str(rating)
    if label is not None:
        if label:
            updates["Label"] = label
        else:
            ours = [n for _, n in _occurrences(rdf, "Label") if _value(n).startswith(LABEL_PREFIX)]
            if ours:
                updates["Label"] = None
    current = {local: [_value(n) for _, n in _occurrences(rdf, local)] for local in updates}
    if all(current[local] == [value] for local, value in updates.items()):
        return doc, False  # already so: leave the file (and its mtime) alone
    target: minidom.Element | None = None
    for local in updates:
        for desc, node in _occurrences(rdf, local):
            target = target or desc
            if isinstance(node, minidom.Attr):
                desc.removeAttributeNode(node)
            else:
                _remove_with_indent(desc, node)
    if target is None:
        target = _description_for_xmp(doc, rdf)
    prefix = _prefix_in_scope(target, XMP_NS)
    if prefix is None:
        prefix = "xmp" if not _bound(target, "xmp") else "xmpBF"
        target.setAttributeNS(XMLNS_NS, f"xmlns:{prefix}", XMP_NS)
    for local, value in updates.items():
        if value is not None:
            target.setAttributeNS(XMP_NS, f"{prefix}:{local}", value)
    return doc, True


def _description_for_xmp(doc: minidom.Document, rdf: minidom.Element) -> minidom.Element:
    """The rdf:Description to hold xmp: properties: one already using the namespace, else the first, else a new one."""
    descriptions = rdf.getElementsByTagNameNS(RDF_NS, "Description")
    for desc in descriptions:
        if _prefix_in_scope(desc, XMP_NS) is not None:
            return desc
    if descriptions:
        return descriptions[0]
    rdf_prefix = rdf.prefix or "rdf"
    desc = doc.createElementNS(RDF_NS, f"{rdf_prefix}:Description")
    desc.setAttributeNS(RDF_NS, f"{rdf_prefix}:about", "")
    rdf.appendChild(desc)
    return desc


def _remove_with_indent(parent: minidom.Element, child: minidom.Element) -> None:
    before = child.previousSibling
    parent.removeChild(child)
    if isinstance(before, minidom.Text) and not before.data.strip():
        parent.removeChild(before)


def _atomic_write(path: Path, data: bytes, mode_from: Path) -> None:
    """`engine.fileio.atomic_write`, with the failure as an `XmpError`."""
    try:
        atomic_write(path, data, mode_from=mode_from)
    except OSError as exc:
        raise XmpError(f"cannot write {path}: {exc.strerror or exc}") from None
