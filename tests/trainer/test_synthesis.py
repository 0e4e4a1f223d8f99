"""Blur synthesis, finishing, overlays, contact sheets and person-mask plumbing (small generated images)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2", reason="trainer synthesis needs the train extra (opencv)")

from trainer import masks
from trainer.synthesis import (
    KIND_LABELS,
    LABELS,
    MASK_KINDS,
    SynthRecord,
    add_overlay,
    contact_sheet,
    defocus_kernel,
    finish,
    lens_softness,
    motion_kernel,
    shake_path,
    strength_range,
    synthesize,
    to_linear,
    veil,
    wide_sharpening,
)

BLUR_KINDS = ("defocus", "shake", "linear_motion")


def _texture(h: int = 192, w: int = 256, seed: int = 0) -> np.ndarray:
    """Detailed but not clipped RGB texture: random blocks at several scales."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w, 3), np.float32)
    for cell in (2, 5, 13):
        small = rng.uniform(-1, 1, ((h + cell - 1) // cell, (w + cell - 1) // cell, 3)).astype(np.float32)
        acc += np.kron(small, np.ones((cell, cell, 1), np.float32))[:h, :w]
    return np.clip(128 + 30 * acc, 10, 220).astype(np.uint8)


def _hf_energy(img: np.ndarray) -> float:
    g = img.astype(np.float32).mean(axis=2)
    lap = cv2.Laplacian(g, cv2.CV_32F)
    return float((lap[8:-8, 8:-8] ** 2).mean())


def _rect_mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def test_every_label_is_one_of_the_four_classes() -> None:
    assert set(KIND_LABELS.values()) <= LABELS
    assert set(KIND_LABELS.values()) == LABELS  # every class gets synthetic examples
    assert set(MASK_KINDS) <= set(KIND_LABELS)
    for kind in KIND_LABELS:
        lo, hi = strength_range(kind)
        assert 0 <= lo <= hi
        assert (hi > 0) == (kind not in ("clean", "high_iso"))
    with pytest.raises(ValueError, match="unknown synthesis kind"):
        strength_range("gaussian")


@pytest.mark.parametrize("kind", sorted(MASK_KINDS))
def test_mask_kinds_require_a_mask(kind: str) -> None:
    img = _texture(64, 64)
    with pytest.raises(ValueError, match="mask"):
        synthesize(img, kind, np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        synthesize(img, kind, np.random.default_rng(0), mask=np.zeros((64, 64), np.uint8))


def test_bad_inputs_are_rejected() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown synthesis kind"):
        synthesize(_texture(32, 32), "zoom", rng)
    with pytest.raises(ValueError, match="uint8"):
        synthesize(np.zeros((32, 32), np.uint8), "defocus", rng)
    with pytest.raises(ValueError, match="strength_px"):
        synthesize(_texture(32, 32), "defocus", rng, strength_px=-1.0)


def test_kernels_are_normalised_and_shaped() -> None:
    disk = defocus_kernel(6.0)
    assert disk.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(disk, disk.T, atol=1e-6) and np.allclose(disk, disk[::-1], atol=1e-6)
    assert disk[disk.shape[0] // 2, 0] < disk.max() * 0.6  # round: the corner row ends are outside
    assert defocus_kernel(0.2).shape == (1, 1)
    line = motion_kernel(15.0, 0.0)
    assert line.sum() == pytest.approx(1.0, abs=1e-5)
    rows = np.nonzero(line.sum(axis=1) > 1e-6)[0]
    assert rows.tolist() == [line.shape[0] // 2]  # a 1-D horizontal line
    assert np.count_nonzero(line.sum(axis=0) > 1e-6) >= 15
    xs, ys, params = shake_path(np.random.default_rng(3), 40.0, 1.0)
    assert float(np.hypot(np.diff(xs), np.diff(ys)).sum()) == pytest.approx(40.0, rel=1e-6)
    assert 0 < params["extent_px"] <= 40.0 + 1e-6


def test_defocus_removes_more_detail_as_strength_grows() -> None:
    img = _texture(384, 512)
    energies = [_hf_energy(img)]
    for strength in (6.0, 14.0, 28.0):
        out, rec = synthesize(img, "defocus", np.random.default_rng(1), strength_px=strength)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert rec == SynthRecord("defocus", "defocused_blurred", strength, rec.params)
        energies.append(_hf_energy(out))
    assert energies[1] < 0.5 * energies[0]
    assert energies[0] > energies[1] > energies[2] > energies[3]


def test_lens_softness_is_mild_scaled_and_on_half_the_images() -> None:
    img = _texture(384, 512)
    sharp = _hf_energy(img)
    applied = []
    for seed in range(40):
        out, params = lens_softness(img, np.random.default_rng(seed), 2.0, 512 / 2048)
        sigma = params["lens_sigma_px"]
        if sigma == 0.0:
            assert out is img  # untouched, not a re-encoded copy
            continue
        assert 0.5 <= sigma <= 2.0 and out.shape == img.shape and out.dtype == np.uint8
        applied.append((sigma, _hf_energy(out)))
    assert 10 <= len(applied) <= 30
    weakest = min(applied)[1]
    strongest = max(applied)[1]
    assert sharp >= weakest > strongest and sharp > strongest  # softer with sigma; a faint one may not show


def test_veil_lowers_contrast_towards_a_bright_airlight_and_keeps_every_edge() -> None:
    img = _texture(192, 256)
    lin = to_linear(img)
    gradients = set()
    for seed in range(12):
        out, params = veil(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        t, level = params["veil_t"], params["veil_level"]
        assert 0.2 <= t <= 0.7 and 0.6 <= level <= 0.95
        gradients.add(params["veil_gradient"])
        out_lin = to_linear(out)
        # no blur: each row is an affine map of the input row in linear light (up to 8-bit rounding), its slope the
        # share of the scene's light that gets through: t at the top, more further down where the veil thins
        slopes = []
        for y in (0, 96, 191):
            fit = np.polyfit(lin[y, :, 2], out_lin[y, :, 2], 1)
            assert np.abs(np.polyval(fit, lin[y, :, 2]) - out_lin[y, :, 2]).max() < 0.02
            slopes.append(fit[0])
        assert abs(slopes[0] - t) < 0.03
        if params["veil_gradient"]:
            assert slopes[0] < slopes[1] < slopes[2] <= 1.0 + 0.03
        else:
            assert abs(slopes[2] - t) < 0.03
        assert out_lin.mean() > lin.mean()  # towards a bright airlight
    assert gradients == {0.0, 1.0}  # uniform and thickening towards the top, both drawn


def test_defocus_is_applied_in_linear_light() -> None:
    """A fine 0/200 checker averages to linear 0.289, i.e. sRGB ~146, not the gamma-space 100."""
    yy, xx = np.mgrid[0:128, 0:128]
    checker = (((yy // 2) + (xx // 2)) % 2 * 200).astype(np.uint8)  # below the highlight knee
    img = np.repeat(checker[..., None], 3, axis=2)
    out, _ = synthesize(img, "defocus", np.random.default_rng(0), strength_px=160.0)
    centre = out[32:96, 32:96].astype(np.float32)
    assert abs(float(centre.mean()) - 146.0) < 4.0
    assert float(centre.std()) < 6.0


def test_linear_motion_blurs_along_its_angle_only() -> None:
    """Stripes that vary along the motion are wiped out; stripes that vary across it survive."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        probe, rec = synthesize(
            _texture(64, 64), "linear_motion", np.random.default_rng(seed), strength_px=90
        )
        theta = math.radians(float(rec.params["angle"]))
        yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
        along = xx * math.cos(theta) - yy * math.sin(theta)  # image rows grow downwards
        across = xx * math.sin(theta) + yy * math.cos(theta)
        kept = []
        for coord in (along, across):
            stripes = (128 + 60 * np.sin(2 * math.pi * coord / 12.0)).astype(np.uint8)
            img = np.repeat(stripes[..., None], 3, axis=2)
            rng = np.random.default_rng(seed)
            out, rec2 = synthesize(img, "linear_motion", rng, strength_px=90)
            assert rec2.params["angle"] == rec.params["angle"]
            c = slice(48, -48)
            kept.append(float(out[c, c].astype(np.float32).std() / img[c, c].astype(np.float32).std()))
        assert kept[0] < 0.3, kept
        assert kept[1] > 0.8, kept
        assert probe.shape == (64, 64, 3)


def test_shake_and_linear_motion_remove_detail() -> None:
    img = _texture(256, 256)
    for kind in ("shake", "linear_motion"):
        out, rec = synthesize(img, kind, np.random.default_rng(4), strength_px=60.0)
        assert rec.label == "motion_blurred"
        assert _hf_energy(out) < 0.5 * _hf_energy(img)


@pytest.mark.parametrize("kind", ["shake", "subject_motion"])
def test_motion_paths_record_their_extent_at_2048_px_whatever_the_image_size(kind: str) -> None:
    """`extent_px` (the path's end-to-end spread) is at a 2048-px long side like the strength, so a path drawn with
    the same random numbers on a photo of half the size records the same extent."""
    h, w = 256, 256
    mask = _rect_mask(h, w, (64, 192, 96, 160))
    small = _texture(h // 2, w // 2)
    got = []
    for img, m in ((_texture(h, w), mask), (small, mask[::2, ::2])):
        _, rec = synthesize(img, kind, np.random.default_rng(8), strength_px=40.0, mask=m)
        got.append(float(rec.params["extent_px"]))
    assert 0 < got[0] <= 40.0 + 1e-6
    assert got[1] == pytest.approx(got[0], rel=0.02, abs=0.05)


@pytest.mark.parametrize("kind", ["subject_defocus", "subject_motion", "bokeh", "panning"])
def test_mask_kinds_record_the_runners_share_of_the_frame_at_any_image_size(kind: str) -> None:
    """`subject_share`: the share of the frame the mask covers (recall of the subject kinds depends on it); at any
    image size, and only for the kinds that take a mask."""
    h, w = 256, 256
    mask = _rect_mask(h, w, (64, 192, 96, 160))   # 128 x 64 px of 256 x 256: 12.5%
    img = _texture(h, w)
    for im, m in ((img, mask), (_texture(h // 2, w // 2), mask)):   # the mask resized to a smaller photo
        _, rec = synthesize(im, kind, np.random.default_rng(5), strength_px=30.0, mask=m)
        assert rec.params["subject_share"] == pytest.approx(0.125, abs=2e-3)
    _, plain = synthesize(img, "defocus", np.random.default_rng(5), strength_px=30.0)
    assert "subject_share" not in plain.params


@pytest.mark.parametrize("kind", ["subject_defocus", "subject_motion"])
def test_subject_blur_keeps_the_background(kind: str) -> None:
    h, w = 256, 256
    img = _texture(h, w, seed=2)
    box = (64, 192, 96, 160)
    out, rec = synthesize(img, kind, np.random.default_rng(5), strength_px=40.0, mask=_rect_mask(h, w, box))
    assert rec.label == KIND_LABELS[kind]
    # blur radius at this size is 40 * 256 / 2048 = 5 px, plus dilation and feathering: 32 px is far
    far = np.ones((h, w), bool)
    far[box[0] - 32 : box[1] + 32, box[2] - 32 : box[3] + 32] = False
    assert np.array_equal(out[far], img[far])
    inner = (slice(box[0] + 10, box[1] - 10), slice(box[2] + 10, box[3] - 10))
    assert _hf_energy(out[inner]) < 0.5 * _hf_energy(img[inner])


@pytest.mark.parametrize("kind", ["bokeh", "panning"])
def test_sharp_subject_kinds_keep_the_subject(kind: str) -> None:
    h, w = 256, 256
    img = _texture(h, w, seed=3)
    box = (48, 208, 96, 160)
    mask = _rect_mask(h, w, box).astype(np.float32) / 255.0  # float masks work as well as uint8
    out, rec = synthesize(img, kind, np.random.default_rng(6), mask=mask)
    assert rec.label == "sharp"
    inside = (slice(box[0] + 3, box[1] - 3), slice(box[2] + 3, box[3] - 3))
    assert np.array_equal(out[inside], img[inside])
    bg = np.ones((h, w), bool)
    bg[box[0] - 24 : box[1] + 24, box[2] - 24 : box[3] + 24] = False
    diff = np.abs(out.astype(np.int16) - img.astype(np.int16))[bg]
    assert float(diff.mean()) > 5.0


def test_background_blur_does_not_leak_the_subject_colour() -> None:
    """A red subject on a grey background: the blurred background next to it stays grey."""
    h, w = 160, 160
    img = np.full((h, w, 3), 120, np.uint8)
    img[40:120, 60:100] = (230, 20, 20)
    mask = _rect_mask(h, w, (40, 120, 60, 100))
    out, _ = synthesize(img, "bokeh", np.random.default_rng(7), strength_px=200.0, mask=mask)
    ring = out[40:120, 44:54].astype(np.int16)  # 6-16 px left of the subject, inside the blur reach
    assert int(np.abs(ring[..., 0] - ring[..., 1]).max()) <= 3


def test_clean_and_high_iso() -> None:
    img = _texture(96, 96)
    clean, rec = synthesize(img, "clean", np.random.default_rng(0))
    assert np.array_equal(clean, img) and rec.strength_px == 0.0 and rec.label == "sharp"
    noisy, rec = synthesize(img, "high_iso", np.random.default_rng(0))
    assert rec.label == "sharp" and rec.strength_px == 0.0
    diff = noisy.astype(np.float32) - img.astype(np.float32)
    assert float(diff.std()) > 2.0
    assert abs(float(diff.mean())) < 3.0


def test_blur_scales_with_image_size() -> None:
    """The same record means the same blur relative to the frame: a 2x image gets a 2x kernel."""
    small = _texture(128, 128, seed=9)
    big = cv2.resize(small, (256, 256), interpolation=cv2.INTER_NEAREST)
    out_s, _ = synthesize(small, "defocus", np.random.default_rng(2), strength_px=48.0)
    out_b, _ = synthesize(big, "defocus", np.random.default_rng(2), strength_px=48.0)
    down = cv2.resize(out_b, (128, 128), interpolation=cv2.INTER_AREA)
    assert float(np.abs(down.astype(np.float32) - out_s.astype(np.float32))[16:-16, 16:-16].mean()) < 3.0


def test_records_are_json_serialisable() -> None:
    import json

    img = _texture(96, 128)
    mask = _rect_mask(96, 128, (20, 80, 40, 90))
    for kind in KIND_LABELS:
        _, rec = synthesize(img, kind, np.random.default_rng(11), mask=mask if kind in MASK_KINDS else None)
        data = json.loads(json.dumps(rec.to_dict()))
        assert data["kind"] == kind and data["label"] == KIND_LABELS[kind]
        lo, hi = strength_range(kind)
        assert lo <= rec.strength_px <= hi


def test_finish_returns_jpeg_and_its_parameters_ignore_the_image() -> None:
    img = _texture(64, 80)
    other, _ = synthesize(img, "defocus", np.random.default_rng(0), strength_px=30.0)
    for seed in range(5):
        data_a, params_a = finish(img, np.random.default_rng(seed))
        _, params_b = finish(other, np.random.default_rng(seed))
        assert params_a == params_b  # drawn from the rng alone: the kind cannot shape them
        decoded = np.asarray(Image.open(io.BytesIO(data_a)))
        assert decoded.shape == img.shape
        assert data_a[:2] == b"\xff\xd8"
        assert 70 <= params_a["jpeg_quality"] <= 97
        assert all(isinstance(v, float) for v in params_a.values())


def test_finish_draws_a_wide_range_of_noise_and_quality() -> None:
    tiny = np.full((8, 8, 3), 100, np.uint8)
    rng = np.random.default_rng(0)
    params = [finish(tiny, rng)[1] for _ in range(300)]
    qualities = {p["jpeg_quality"] for p in params}
    shots = np.array([p["noise_shot"] for p in params])
    assert min(qualities) <= 72 and max(qualities) >= 95
    assert (shots < 2e-5).mean() > 0.1  # sometimes nearly clean
    assert (shots > 5e-4).mean() > 0.05  # sometimes strongly noisy


def test_wide_sharpening_keeps_the_noise_of_a_draw_and_sharpens_more() -> None:
    img = _texture(64, 80)
    amounts, crisper = [], 0
    for seed in range(40):
        data_mild, mild = finish(img, np.random.default_rng(seed))
        data, wide = finish(img, np.random.default_rng(seed), wide_sharpening(1.0))
        noise = [k for k in mild if k.startswith("noise")]  # drawn before the sharpening: the same
        assert [mild[k] for k in noise] == [wide[k] for k in noise]
        assert 0.3 <= wide["sharpen_amount"] <= 1.5 and 0.5 <= wide["sharpen_sigma"] <= 2.0
        amounts.append(wide["sharpen_amount"])
        if mild["sharpen_amount"] == 0:  # stronger output sharpening leaves crisper edges than none
            hf_mild = _hf_energy(np.asarray(Image.open(io.BytesIO(data_mild))))
            crisper += _hf_energy(np.asarray(Image.open(io.BytesIO(data)))) > hf_mild
    assert crisper >= 20
    assert max(amounts) > 1.0  # up to strong sharpening, where the standard finishing stops at 0.6
    half = [finish(img, np.random.default_rng(s), wide_sharpening(0.5))[1]["sharpen_amount"] > 0 for s in range(40)]
    assert 10 <= sum(half) <= 30
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            wide_sharpening(share)


def test_add_overlay_pastes_sharp_graphics_without_touching_the_input() -> None:
    img, _ = synthesize(_texture(240, 320), "defocus", np.random.default_rng(0), strength_px=80.0)
    before = img.copy()
    for style in ("credit_tag", "banner", "qr_panel", "logo", "watermark"):
        out = add_overlay(img, np.random.default_rng(1), (style,))
        assert out.shape == img.shape and out.dtype == np.uint8
        changed = np.any(out != img, axis=2)
        assert changed.mean() > 0.002, style
        assert _hf_energy(out) > _hf_energy(img), style  # the overlay adds crisp edges
    assert np.array_equal(img, before)
    a = add_overlay(img, np.random.default_rng(5))
    b = add_overlay(img, np.random.default_rng(5))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown overlay"):
        add_overlay(img, np.random.default_rng(0), ("sticker",))


def test_contact_sheet(tmp_path: Path) -> None:
    img = _texture(60, 90)
    src = tmp_path / "src.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "sheets" / "sheet.jpg"
    contact_sheet(
        [(img, "sharp clean 0px"), (str(src), "a long caption " * 4)] * 3, str(out), thumb=64, columns=4
    )
    with Image.open(out) as sheet:
        assert sheet.format == "JPEG"
        assert sheet.width == 4 * (64 + 4) + 4
        assert sheet.height > 2 * 64
    with pytest.raises(ValueError):
        contact_sheet([], str(tmp_path / "empty.jpg"))


# ---- masks -------------------------------------------------------------------------------------


def test_load_shared_mask(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img_path = tmp_path / "images" / "7.jpg"
    Image.fromarray(_texture(20, 30)).save(img_path)
    m = np.zeros((20, 30), np.uint8)
    m[5:15, 10:20] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "7.png")
    loaded = masks.load_shared_mask(img_path)
    assert loaded is not None and loaded.dtype == np.float32
    assert loaded.max() == 1.0 and loaded.sum() == 100.0
    assert masks.load_shared_mask(tmp_path / "images" / "8.jpg") is None
    assert masks.load_shared_mask(tmp_path / "7.jpg") is None


def test_largest_component_keeps_the_nearest_runner() -> None:
    m = np.zeros((100, 100), np.float32)
    m[10:30, 10:20] = 1.0  # small, far runner
    m[40:95, 50:80] = 0.9  # big, near runner
    out = masks.largest_component(m)
    assert out is not None
    assert out[10:30, 10:20].max() == 0.0
    assert out[60, 60] == pytest.approx(0.9)
    assert masks.largest_component(np.zeros((50, 50), np.float32)) is None
    speck = np.zeros((200, 200), np.float32)
    speck[5:8, 5:8] = 1.0
    assert masks.largest_component(speck) is None


def test_is_subject_rejects_small_far_runners() -> None:
    m = np.zeros((100, 100), np.float32)
    m[50:70, 40:50] = 1.0  # 2% of the frame but only 20% of its height
    assert not masks.is_subject(m)
    m[20:70, 40:50] = 1.0
    assert masks.is_subject(m)
    assert not masks.is_subject(np.zeros((10, 10), np.float32))


def test_selfie_segmentation_completes_the_pose_person_nearby_only() -> None:
    pose = np.zeros((600, 600), np.float32)
    pose[180:570, 240:360] = 1.0  # body; reach is 3% of 600 = 18 px
    selfie = pose.copy()
    selfie[165:180, 350:370] = 0.9  # a raised hand the pose model missed
    selfie[180:570, 510:585] = 1.0  # another runner, out of reach
    out = masks._combine_masks(pose, selfie)
    assert out is not None
    assert out[170, 365] == pytest.approx(0.9)
    assert out[300, 550] == 0.0
    alone = masks._combine_masks(None, selfie)
    assert alone is not None and np.array_equal(alone, selfie)
    with_pose_only = masks._combine_masks(pose, None)
    assert with_pose_only is not None and np.array_equal(with_pose_only, pose)
    assert masks._combine_masks(None, None) is None


def test_a_clearly_nearer_selfie_runner_replaces_the_pose_person_behind() -> None:
    pose = np.zeros((600, 600), np.float32)
    pose[200:400, 60:120] = 1.0  # the pose model followed a runner behind (200 px tall, 12,000 px)
    selfie = pose.copy()
    selfie[100:590, 300:460] = 1.0  # the nearest runner (490 px tall, 78,400 px), separate
    selfie[99, 300:460] = 0.3  # its soft edge
    out = masks._combine_masks(pose, selfie, nearest=True)
    assert out is not None and out[300, 90] == 0.0 and out[300, 380] == 1.0
    pose_only = masks._combine_masks(pose, selfie)  # the default: the pose model's person (the shipped recipe)
    assert pose_only is not None and pose_only[300, 90] == 1.0 and pose_only[300, 380] == 0.0
    person = masks.largest_component(out)
    assert person is not None and person[300, 380] == 1.0 and person[300, 90] == 0.0
    assert person[99, 380] == pytest.approx(0.3)
    # not clearly larger (16,800 px < 1.5 x 12,000): the pose person stays
    selfie[99:590, 300:460] = 0.0
    selfie[200:440, 300:370] = 1.0
    kept = masks._combine_masks(pose, selfie, nearest=True)
    assert kept is not None and kept[300, 90] == 1.0 and kept[300, 330] == 0.0
    # larger but no taller, wider than tall: a merged group at the same distance, not a nearer runner
    selfie[200:440, 300:370] = 0.0
    selfie[190:410, 250:560] = 1.0
    group = masks._combine_masks(pose, selfie, nearest=True)
    assert group is not None and group[300, 90] == 1.0 and group[300, 400] == 0.0


def test_person_mask_uses_cache_and_resizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masks, "_mp_state", {"ok": False})  # as without MediaPipe
    img = _texture(80, 120)
    photo = tmp_path / "race01" / "cam" / "a.jpg"
    assert masks.person_mask(img, photo, tmp_path / "cache") is None
    assert masks.segment_person(img) is None
    cached = masks.cached_mask_path(photo, tmp_path / "cache")
    assert cached.parent == tmp_path / "cache" and cached.suffix == ".png"
    assert masks.cached_mask_path(tmp_path / "race02" / "cam" / "a.jpg", tmp_path / "cache") != cached
    cached.parent.mkdir()
    m = np.zeros((40, 60), np.uint8)
    m[10:35, 20:40] = 255
    Image.fromarray(m).save(cached)
    got = masks.person_mask(img, photo, tmp_path / "cache")
    assert got is not None and got.shape == (80, 120)
    assert got[45, 60] == pytest.approx(1.0) and got[5, 5] == 0.0
    with pytest.raises(RuntimeError, match="mediapipe"):
        masks.precompute_masks([photo], tmp_path / "out")
