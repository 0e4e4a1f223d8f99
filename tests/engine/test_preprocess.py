"""Image input: formats, orientation, modes, limits and bad files."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import UnreadableImageError, load_classifier
from engine.preprocess import InputSpec, draft_side, load_model_input, open_image, preprocess, to_model_image
from tests.toydata import open_as_ultralytics_patches_it, scene

SPEC = InputSpec(size=64, resize="stretch")


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("TIFF", ".tif"), ("WEBP", ".webp"), ("BMP", ".bmp")])
def test_every_supported_format_decodes(tmp_path: Path, fmt: str, suffix: str) -> None:
    p = tmp_path / f"img{suffix}"
    scene(2, (160, 100)).save(p, format=fmt)
    img = open_image(p, SPEC)
    assert img.mode == "RGB"
    x = load_model_input(p, SPEC)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "I", "F", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = scene(5, (120, 80))
    if mode == "I;16":
        arr = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(arr).convert("I;16") if Image.fromarray(arr).mode != "I;16" else Image.fromarray(arr)
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0)
    else:
        img = base.convert(mode)
    p = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    img.save(p)
    out = open_image(p)
    assert out.mode == "RGB" and out.size == (120, 80)
    if mode in ("L", "I;16", "I", "F"):
        grey = np.asarray(base.convert("L"), dtype=np.int16)
        assert np.abs(np.asarray(out, dtype=np.int16)[..., 0] - grey).max() <= 1  # 16-bit scaled, not clipped


def test_alpha_is_composited_not_dropped(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    p = tmp_path / "a.png"
    rgba.save(p)
    assert open_image(p).getpixel((5, 5)) == (128, 128, 128)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = scene(1, (40, 30)).convert("P")
    img.info["transparency"] = 0
    p = tmp_path / "p.png"
    img.save(p, transparency=0)
    assert open_image(p).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 100, 100))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    out = open_image(p)
    assert out.size == (100, 200)
    assert out.getpixel((50, 20))[0] > 200 and out.getpixel((50, 180))[0] < 50  # white on top after rotation


def test_reduced_jpeg_decode_keeps_enough_pixels(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    scene(4, (2400, 1600)).save(p, quality=90)
    spec = InputSpec(size=224, resize="stretch", draft_factor=2.0)
    img = open_image(p, spec)
    assert min(img.size) >= 448 and img.size[0] < 2400  # decoded at a DCT scale, never below 2x the input
    full = open_image(p, InputSpec(size=224, resize="stretch", draft_factor=0))
    assert full.size == (2400, 1600)


def test_reduced_decode_changes_probabilities_by_less_than_002(tmp_path: Path) -> None:
    clf = load_classifier()
    full_spec = replace(clf.spec, draft_factor=0)
    worst = 0.0
    for i in range(2):
        p = tmp_path / f"d{i}.jpg"
        scene(10 + i, (4200, 2800)).save(p, quality=92)
        assert open_image(p, clf.spec).size[0] < 4200  # really decoded at a reduced scale
        a = clf.predict(load_model_input(p, clf.spec)[None])[0]
        b = clf.predict(load_model_input(p, full_spec)[None])[0]
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= 0.02


def _truncated(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    scene(1, (400, 300)).save(buf, format="JPEG", quality=90)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return p


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: d / "missing.jpg", "not found"),
        (lambda d: (d / "zero.jpg").write_bytes(b"") and d / "zero.jpg" or d / "zero.jpg", "empty"),
        (lambda d: (d / "text.jpg").write_text("not an image") and d / "text.jpg", "not an image"),
        (_truncated, "truncated"),
        (lambda d: d, "folder"),
    ],
)
def test_bad_files_raise_readable_errors(tmp_path: Path, make, needle: str) -> None:
    p = make(tmp_path)
    with pytest.raises(UnreadableImageError, match=needle):
        open_image(p, SPEC)


def test_unsupported_format_is_named(tmp_path: Path) -> None:
    p = tmp_path / "x.gif"
    scene(1, (40, 30)).save(p, format="GIF")
    with pytest.raises(UnreadableImageError, match="unsupported format GIF"):
        open_image(p, SPEC)


def test_decompression_bomb_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(p)
    with pytest.raises(UnreadableImageError, match="too large"):
        open_image(p, InputSpec(size=64, max_pixels=1_000_000))


def test_center_crop_mode_matches_ultralytics_geometry() -> None:
    img = scene(3, (300, 200))
    x = preprocess(img, InputSpec(size=100, resize="center_crop"))
    assert x.shape == (3, 100, 100)
    ref = np.asarray(img.resize((150, 100), Image.Resampling.BILINEAR).crop((25, 0, 125, 100)), dtype=np.float32) / 255
    assert np.abs(x.transpose(1, 2, 0) - ref).max() < 1e-6


def test_reducing_gap_is_pils_two_step_resize_and_none_is_plain_lanczos() -> None:
    img = scene(7, (1500, 1000))
    plain = to_model_image(img, InputSpec(size=224, resize="stretch", reducing_gap=None))
    gapped = to_model_image(img, InputSpec(size=224, resize="stretch", reducing_gap=3.0))
    lanczos = Image.Resampling.LANCZOS
    assert np.array_equal(np.asarray(plain), np.asarray(img.resize((224, 224), lanczos)))
    assert np.array_equal(np.asarray(gapped), np.asarray(img.resize((224, 224), lanczos, reducing_gap=3.0)))
    diff = np.abs(np.asarray(plain, dtype=np.int16) - np.asarray(gapped, dtype=np.int16))
    assert 0 < diff.max() and diff.mean() < 2.0  # a different resize, but nearly the same picture


def test_camera_originals_decode_further_down_than_exports(tmp_path: Path) -> None:
    spec = InputSpec(size=224, resize="stretch")  # draft 4.0; originals above 3000 px at 2.0
    assert draft_side(spec, (2048, 1365)) == 896 and draft_side(spec, (6000, 4000)) == 448
    assert draft_side(replace(spec, draft_factor=0), (6000, 4000)) == 0  # 0 still means: always in full
    assert draft_side(replace(spec, draft_factor=1.0), (6000, 4000)) == 224  # never more pixels than draft_factor
    export, original = tmp_path / "export.jpg", tmp_path / "original.jpg"
    Image.new("RGB", (2048, 1365), (90, 120, 150)).save(export, quality=90)
    Image.new("RGB", (3200, 2000), (90, 120, 150)).save(original, quality=90)
    assert open_image(export, spec).size == (2048, 1365)  # an export decodes in full, as training images did
    assert open_image(original, spec).size == (800, 500)  # 1/4: the largest reduction keeping 2 x 224


def test_an_unidentified_file_stays_a_readable_error_under_ultralytics_patch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "open", open_as_ultralytics_patches_it(Image.open))
    bad = tmp_path / "text.jpg"
    bad.write_text("not an image")
    with pytest.raises(UnreadableImageError, match="not an image"):
        open_image(bad, SPEC)


# --- veil lift (engine.preprocess.lift_veil) ---------------------------------------------------------------------


def _veiled(img: Image.Image, t: float = 0.3, airlight: float = 0.78) -> Image.Image:
    """`img` seen through a uniform bright veil, x -> t * x + A * (1 - t) in linear light, as an 8-bit photo."""
    from engine.preprocess import SRGB8_TO_LINEAR, linear_to_srgb8

    return Image.fromarray(linear_to_srgb8(SRGB8_TO_LINEAR[np.asarray(img)] * t + airlight * (1 - t)))


def test_black_point_is_the_half_percent_darkest_per_channel() -> None:
    from engine.preprocess import veil_black_point

    arr = np.full((100, 100, 3), 200, np.uint8)
    arr.reshape(-1, 3)[:40, 0] = 0  # 0.4% of the red channel black: under the percentile
    arr.reshape(-1, 3)[:60, 1] = 10  # 0.6% of the green one: over it
    assert veil_black_point(Image.fromarray(arr)).tolist() == [200, 10, 200]


def test_a_clear_view_is_left_alone_and_a_veiled_one_gets_its_contrast_back() -> None:
    from engine.preprocess import SRGB8_TO_LINEAR, VEIL_GATE, veil_black_point

    on = InputSpec(size=64, resize="stretch", veil_gate=VEIL_GATE)
    off = replace(on, veil_gate=None)
    clear = scene(1, (300, 200))
    assert veil_black_point(to_model_image(clear, on)).min() < VEIL_GATE
    np.testing.assert_array_equal(preprocess(clear, on), preprocess(clear, off))

    fog = _veiled(clear)
    assert veil_black_point(to_model_image(fog, on)).min() >= VEIL_GATE
    lin = {name: SRGB8_TO_LINEAR[np.round(x * 255).astype(np.uint8)] for name, x in
           (("clear", preprocess(clear, off)), ("veiled", preprocess(fog, off)), ("lifted", preprocess(fog, on)))}
    assert lin["lifted"].std() > 2 * lin["veiled"].std()  # the veil's contrast loss undone, up to t
    assert lin["lifted"].min() < 0.05 < 0.4 < lin["veiled"].min()  # its black point back near black
    # no edge moved: the lifted view is the clear one in linear light, scaled per channel
    for c in range(3):
        assert np.corrcoef(lin["clear"][c].ravel(), lin["lifted"][c].ravel())[0, 1] > 0.98


def test_the_gate_decides_on_the_darkest_channel() -> None:
    from engine.preprocess import VEIL_GATE

    on = InputSpec(size=32, resize="stretch", veil_gate=VEIL_GATE)
    below = Image.new("RGB", (64, 64), (VEIL_GATE + 40, VEIL_GATE - 1, VEIL_GATE + 40))
    at = Image.new("RGB", (64, 64), (VEIL_GATE + 40, VEIL_GATE, VEIL_GATE + 40))
    assert preprocess(below, on).max() > 0  # one channel dark enough: not a veil, untouched
    np.testing.assert_array_equal(preprocess(below, on), preprocess(below, replace(on, veil_gate=None)))
    assert preprocess(at, on).max() == 0  # a flat veil and nothing behind it: lifted to black


def test_the_engine_lifts_the_veil_of_the_whole_frame_and_of_each_view(tmp_path: Path) -> None:
    from engine import EngineConfig
    from engine.preprocess import VEIL_GATE, lift_veil, veil_black_point

    lifted = load_classifier()
    plain = load_classifier(config=EngineConfig(veil_gate=None, tile_check=None))
    assert lifted.spec.veil_gate == VEIL_GATE and "veil lifted" in lifted.decision_rule
    assert "veil" not in plain.decision_rule
    fog = _veiled(Image.open(Path(__file__).resolve().parents[2] / "resources/samples/sharp__bus.jpg").convert("RGB"))
    p = tmp_path / "fog.png"
    fog.save(p)
    black = veil_black_point(to_model_image(fog, lifted.spec))
    expected = plain.predict(preprocess(lift_veil(fog, black), plain.spec)[None])[0]
    if lifted.wants_tiles(expected):  # the views are lifted one by one, each from its own black point
        expected = lifted.fuse_tiles(expected, lifted.tile_inputs(fog))
    got = lifted.classify(p).probabilities
    assert [got[n] for n in lifted.names] == pytest.approx(list(expected), abs=1e-5)


@pytest.mark.parametrize("sample", ["sharp__bus.jpg", "sharp__zidane.jpg"])
def test_a_sharp_photo_in_thick_fog_is_not_flagged(sample: str) -> None:
    """MODEL_CARD.md, "Haze and fog": the network alone flagged half the held-out race photos at t 0.25."""
    img = Image.open(Path(__file__).resolve().parents[2] / "resources/samples" / sample).convert("RGB")
    result = load_classifier().classify_image(_veiled(img, t=0.25))
    assert result.top_class == "sharp", result.classification


# --- dark lift (engine.preprocess.lift_dark) ---------------------------------------------------------------------


def _underexposed(img: Image.Image, k: float = 0.15) -> Image.Image:
    """`img` with k times its light (0.15: about 2.7 stops under), in linear light, as a camera would record it."""
    from engine.preprocess import SRGB8_TO_LINEAR, linear_to_srgb8

    return Image.fromarray(linear_to_srgb8(SRGB8_TO_LINEAR[np.asarray(img.convert("RGB"))] * k))


def test_white_point_is_the_half_percent_brightest_of_the_brightest_channel() -> None:
    from engine.preprocess import dark_white_point

    arr = np.full((100, 100, 3), 50, np.uint8)
    arr.reshape(-1, 3)[:40, 2] = 250  # 0.4% of the blue channel bright: over the percentile
    assert dark_white_point(Image.fromarray(arr)) == 50
    arr.reshape(-1, 3)[:60, 0] = 200  # 0.6% of the red one: under it
    assert dark_white_point(Image.fromarray(arr)) == 200


def test_a_well_exposed_frame_is_left_alone_and_an_underexposed_one_is_brought_up() -> None:
    from engine.preprocess import DARK_GATE, DARK_TARGET, SRGB8_TO_LINEAR, dark_white_point

    on = InputSpec(size=64, resize="stretch", dark_gate=DARK_GATE)
    off = replace(on, dark_gate=None)
    day = scene(2, (300, 200))
    assert dark_white_point(to_model_image(day, on)) >= DARK_GATE
    np.testing.assert_array_equal(preprocess(day, on), preprocess(day, off))

    dusk = _underexposed(day)
    assert dark_white_point(to_model_image(dusk, on)) < DARK_GATE
    lifted = preprocess(dusk, on)
    assert abs(dark_white_point(Image.fromarray(np.round(lifted.transpose(1, 2, 0) * 255).astype(np.uint8)))
               - DARK_TARGET) <= 3
    lin = {name: SRGB8_TO_LINEAR[np.round(x * 255).astype(np.uint8)] for name, x in
           (("day", preprocess(day, off)), ("dusk", preprocess(dusk, off)), ("lifted", lifted))}
    assert lin["lifted"].mean() > 4 * lin["dusk"].mean()
    for c in range(3):  # a gain: every edge where it was, the day's view up to a scale
        assert np.corrcoef(lin["day"][c].ravel(), lin["lifted"][c].ravel())[0, 1] > 0.99


def test_the_gain_is_capped_and_a_black_frame_stays_black() -> None:
    from engine.preprocess import DARK_GATE, DARK_MAX_GAIN, SRGB8_TO_LINEAR, lift_dark

    night = Image.new("RGB", (32, 32), (3, 3, 3))
    lifted = np.asarray(lift_dark(night, 3))
    assert SRGB8_TO_LINEAR[lifted[0, 0, 0]] == pytest.approx(DARK_MAX_GAIN * SRGB8_TO_LINEAR[3], rel=0.1)
    spec = InputSpec(size=16, resize="stretch", dark_gate=DARK_GATE)
    assert preprocess(Image.new("RGB", (32, 32)), spec).max() == 0


def test_the_quadrant_check_brings_up_the_frame_not_a_dark_view(tmp_path: Path) -> None:
    """A night sky over a lit street is one frame, well exposed: its dark quadrants are not lifted on their own."""
    from engine import EngineConfig

    lifted = load_classifier()
    plain = load_classifier(config=EngineConfig(dark_gate=None))
    assert "brought up" in lifted.decision_rule and "brought up" not in plain.decision_rule
    street = np.asarray(scene(3, (320, 240))).copy()
    street[:120] //= 12  # the top half nearly black
    frame = Image.fromarray(street)
    np.testing.assert_array_equal(lifted.tile_inputs(frame), plain.tile_inputs(frame))

    dusk = _underexposed(frame.resize((320, 240)), 0.1)
    views = lifted.tile_inputs(dusk)
    assert views.mean() > 1.5 * plain.tile_inputs(dusk).mean()  # the whole frame is brought up, every view with it
    p = tmp_path / "dusk.png"
    dusk.save(p)
    expected = lifted.predict(preprocess(dusk, lifted.spec)[None])[0]
    if lifted.wants_tiles(expected):
        expected = lifted.fuse_tiles(expected, views)
    got = lifted.classify(p).probabilities
    assert [got[n] for n in lifted.names] == pytest.approx(list(expected), abs=1e-5)
