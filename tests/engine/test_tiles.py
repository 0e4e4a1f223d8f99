"""The quadrant check: tiles cover the frame, the fusion only raises whole-frame blur, and both paths use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.model
from engine import EngineConfig, UnreadableImageError, load_classifier, pipeline
from engine.model import BlurClassifier, ModelInfo
from engine.preprocess import InputSpec
from engine.tiles import WHOLE_FRAME_BLURS, TileCheck
from tests.toydata import scene

NAMES = ("defocused_blurred", "defocused_object_portrait", "motion_blurred", "sharp")


@pytest.mark.parametrize("size", [(7, 5), (2048, 1365), (1365, 2048), (225, 224)])
@pytest.mark.parametrize("grid", [2, 3])
def test_tiles_cover_the_frame_once_and_the_centre_view_is_one_more(size: tuple[int, int], grid: int) -> None:
    w, h = size
    cover = np.zeros((h, w), dtype=np.int32)
    boxes = TileCheck(grid=grid).boxes(size)
    assert len(boxes) == grid * grid + 1
    for left, top, right, bottom in boxes[:-1]:
        assert right > left and bottom > top
        cover[top:bottom, left:right] += 1
    assert (cover == 1).all()
    left, top, right, bottom = boxes[-1]
    assert (right - left, bottom - top) == (w // grid, h // grid)
    assert abs(left - (w - right)) <= 1 and abs(top - (h - bottom)) <= 1  # centred


def test_fusion_raises_a_whole_frame_blur_to_its_smallest_tile_probability() -> None:
    whole = np.array([0.10, 0.05, 0.05, 0.80])
    tiles = np.array([[0.9, 0.0, 0.0, 0.1], [0.95, 0.0, 0.0, 0.05], [0.92, 0.0, 0.0, 0.08], [0.97, 0.0, 0.0, 0.03]])
    fused = TileCheck().fuse(whole, tiles, NAMES)
    expected = np.array([0.90, 0.05, 0.05, 0.80]) / 1.80
    np.testing.assert_allclose(fused, expected)
    assert NAMES[int(fused.argmax())] == "defocused_blurred"


def test_one_sharp_view_keeps_the_whole_frame_answer() -> None:
    whole = np.array([0.30, 0.02, 0.08, 0.60])
    blurred, sharp = [0.99, 0, 0.01, 0], [0.01, 0, 0.01, 0.98]
    for k in range(5):  # a sharp runner in one quadrant, or in the centre that the quadrants cut in four
        tiles = np.array([sharp if i == k else blurred for i in range(5)])
        np.testing.assert_allclose(TileCheck().fuse(whole, tiles, NAMES), whole)


def test_fusion_never_lowers_and_never_raises_sharp_or_subject_blur() -> None:
    rng = np.random.default_rng(0)
    check = TileCheck(gate=0.0, overrule_gate=None)  # every frame past the gate; the overrule: the tests below
    for _ in range(200):
        whole = rng.dirichlet(np.ones(4))
        tiles = rng.dirichlet(np.ones(4), size=4)
        fused = check.fuse(whole, tiles, NAMES)
        assert fused.sum() == pytest.approx(1.0)
        scale = fused[NAMES.index("sharp")] / whole[NAMES.index("sharp")]
        assert scale <= 1.0 + 1e-12  # renormalising only ever shrinks the untouched classes, alike
        assert fused[1] / whole[1] == pytest.approx(scale)
        for c in WHOLE_FRAME_BLURS:
            k = NAMES.index(c)
            assert fused[k] / scale == pytest.approx(max(whole[k], tiles[:, k].min()))


@pytest.mark.parametrize(("db", "mb", "wanted"), [(0.049, 0.0, False), (0.05, 0.0, True), (0.0, 0.2, True),
                                                   (0.01, 0.01, False)])
def test_gate_looks_at_the_whole_frame_blurs_only(db: float, mb: float, wanted: bool) -> None:
    probs = np.array([db, 0.9, mb, 0.1 - db - mb + 0.0])
    assert TileCheck(gate=0.05).wanted(probs, NAMES) is wanted


@pytest.mark.parametrize(("db", "mb", "wanted"), [(0.09, 0.0, False), (0.09, 0.049, False), (0.0, 0.05, True),
                                                  (0.1, 0.0, True)])
def test_the_overrule_widens_the_gate_for_motion_only(db: float, mb: float, wanted: bool) -> None:
    probs = np.array([db, 0.0, mb, 1.0 - db - mb])
    assert TileCheck(gate=0.1, overrule_gate=0.05).wanted(probs, NAMES) is wanted
    assert TileCheck(gate=0.1, overrule_gate=None).wanted(probs, NAMES) is (max(db, mb) >= 0.1)


SHARP_VIEW = [0.0, 0.0, 0.02, 0.98]
MOVING_CENTRE = [0.01, 0.0, 0.95, 0.04]


def test_below_the_gate_the_blurs_are_not_raised() -> None:
    """Tiles looked at for the overrule alone leave the whole-frame blurs as they are."""
    whole = np.array([0.09, 0.0, 0.06, 0.85])
    tiles = np.array(UNIFORM_TILES)  # every view defocused
    np.testing.assert_allclose(TileCheck(gate=0.1).fuse(whole, tiles, NAMES), whole)
    assert NAMES[int(TileCheck(gate=0.05).fuse(whole, tiles, NAMES).argmax())] == "defocused_blurred"


def test_a_moving_centre_overrules_a_sharp_verdict() -> None:
    """A small runner's smear: the whole frame says sharp with a little motion, the centre view sees it."""
    whole = np.array([0.0, 0.01, 0.06, 0.93])
    tiles = np.array([SHARP_VIEW] * 4 + [MOVING_CENTRE])
    fused = TileCheck().fuse(whole, tiles, NAMES)
    np.testing.assert_allclose(fused, MOVING_CENTRE)
    assert NAMES[int(fused.argmax())] == "motion_blurred"
    np.testing.assert_allclose(TileCheck(overrule_gate=None).fuse(whole, tiles, NAMES), whole)


@pytest.mark.parametrize(("whole", "views"), [
    ([0.0, 0.01, 0.04, 0.95], [SHARP_VIEW] * 4 + [MOVING_CENTRE]),  # too little motion in the whole frame
    ([0.0, 0.01, 0.06, 0.93], [SHARP_VIEW] * 4 + [[0.0, 0.0, 0.89, 0.11]]),  # the centre not sure enough
    ([0.0, 0.01, 0.06, 0.93], [MOVING_CENTRE] + [SHARP_VIEW] * 4),  # motion in a corner only: a panning background
    ([0.0, 0.55, 0.06, 0.39], [SHARP_VIEW] * 4 + [MOVING_CENTRE]),  # not a sharp verdict: the whole frame's stands
])
def test_the_overrule_needs_a_sharp_verdict_motion_in_the_whole_frame_and_a_sure_centre(
    whole: list[float], views: list[list[float]]
) -> None:
    fused = TileCheck().fuse(np.array(whole), np.array(views), NAMES)
    np.testing.assert_allclose(fused, TileCheck(overrule_gate=None).fuse(np.array(whole), np.array(views), NAMES))


def test_with_the_overrule_a_fusion_is_the_plain_one_or_the_centre_view() -> None:
    rng = np.random.default_rng(1)
    check, plain = TileCheck(overrule_gate=0.02, overrule_min=0.6), TileCheck(overrule_gate=None)
    overruled = 0
    for _ in range(500):
        whole = rng.dirichlet([1, 1, 1, 4])
        tiles = rng.dirichlet([1, 1, 2, 1], size=5)
        fused, base = check.fuse(whole, tiles, NAMES), plain.fuse(whole, tiles, NAMES)
        if np.allclose(fused, base):
            continue
        overruled += 1
        np.testing.assert_allclose(fused, tiles[-1] / tiles[-1].sum())
        assert NAMES[int(base.argmax())] == "sharp" and NAMES[int(fused.argmax())] == "motion_blurred"
    assert overruled > 10


@pytest.mark.parametrize(("kwargs", "match"), [({"grid": 1}, "grid"), ({"gate": 1.5}, "gate"),
                                               ({"gate": -0.1}, "gate"), ({"overrule_gate": 1.5}, "overrule_gate"),
                                               ({"overrule_min": 0.5}, "overrule_min"),
                                               ({"overrule_min": 1.1}, "overrule_min")])
def test_bad_settings_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TileCheck(**kwargs)  # type: ignore[arg-type]


def test_tile_inputs_are_made_like_the_whole_frame() -> None:
    spec = InputSpec(size=32, resize="stretch")
    img = scene(3, (120, 80))
    x = TileCheck().inputs(img, spec)
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.float32
    top_left = np.asarray(img.crop((0, 0, 60, 40)).resize((32, 32), spec.filter), dtype=np.float32) / 255
    np.testing.assert_allclose(x[0], top_left.transpose(2, 0, 1), atol=1e-6)
    centre = np.asarray(img.crop((30, 20, 90, 60)).resize((32, 32), spec.filter), dtype=np.float32) / 255
    np.testing.assert_allclose(x[4], centre.transpose(2, 0, 1), atol=1e-6)


@pytest.fixture(scope="module")
def bundled() -> BlurClassifier:
    return load_classifier()


def test_only_whole_frame_models_get_the_check(bundled: BlurClassifier) -> None:
    assert bundled.tile_check == TileCheck()  # the engine's default, for the bundled (stretch) model
    info = bundled.info
    cropped = ModelInfo(info.onnx_path, info.names, InputSpec(size=info.spec.size, resize="center_crop"), {})
    assert BlurClassifier(cropped, bundled._session, TileCheck()).tile_check is None
    assert load_classifier(config=EngineConfig(tile_check=None)).tile_check is None


TILE_MARK = np.float32(0.123)


class _Scripted(BlurClassifier):
    """The bundled model's files with scripted outputs: whole frames get `whole`, tile batches `tiles`."""

    def __init__(self, base: BlurClassifier, whole: list[float], tiles: list[list[float]]) -> None:
        super().__init__(base.info, base._session, TileCheck())
        self.whole, self.tiles = np.array(whole), np.array(tiles)
        self.tile_batches = 0

    def tile_inputs(self, image: Image.Image) -> np.ndarray:
        return np.full((len(self.tiles), 3, self.spec.size, self.spec.size), TILE_MARK, dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if np.all(batch == TILE_MARK):
            self.tile_batches += 1
            return self.tiles
        return np.tile(self.whole, (batch.shape[0], 1))


def _files(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        p = tmp_path / f"f{i}.jpg"
        scene(i, (160, 107)).save(p, quality=90)
        paths.append(p)
    return paths


UNIFORM_TILES = [[0.9, 0.0, 0.0, 0.1], [0.95, 0.0, 0.0, 0.05], [0.92, 0.0, 0.0, 0.08], [0.97, 0.0, 0.0, 0.03],
                 [0.93, 0.0, 0.0, 0.07]]


def test_single_check_and_pipeline_fuse_the_tiles_alike(bundled: BlurClassifier, tmp_path: Path) -> None:
    clf = _Scripted(bundled, [0.10, 0.05, 0.05, 0.80], UNIFORM_TILES)
    paths = _files(tmp_path, 5)
    single = clf.classify(paths[0], "defocused_blurred")
    assert single.top_class == "defocused_blurred" and single.detected
    assert single.confidence == pytest.approx(0.5)
    assert clf.tile_batches == 1
    batch = list(pipeline.classify_paths(clf, paths, "defocused_blurred", workers=2, batch_size=3))
    assert clf.tile_batches == 1 + 5
    assert all(r.probabilities == pytest.approx(single.probabilities) for r in batch)


def test_single_check_and_pipeline_let_the_centre_overrule_alike(bundled: BlurClassifier, tmp_path: Path) -> None:
    """Motion below the quadrant gate but past the overrule's: the tiles are looked at and the centre's answer stands."""
    clf = _Scripted(bundled, [0.0, 0.01, 0.06, 0.93], [SHARP_VIEW] * 4 + [MOVING_CENTRE])
    paths = _files(tmp_path, 3)
    single = clf.classify(paths[0], "motion_blurred")
    assert single.top_class == "motion_blurred" and single.detected
    assert single.confidence == pytest.approx(0.95)
    batch = list(pipeline.classify_paths(clf, paths, "motion_blurred", workers=2, batch_size=2))
    assert clf.tile_batches == 1 + 3
    assert all(r.probabilities == pytest.approx(single.probabilities) for r in batch)


def test_below_the_gate_no_tile_is_decoded_or_inferred(bundled: BlurClassifier, tmp_path: Path) -> None:
    clf = _Scripted(bundled, [0.01, 0.01, 0.01, 0.97], UNIFORM_TILES)
    results = list(pipeline.classify_paths(clf, _files(tmp_path, 4), workers=2, batch_size=2))
    assert clf.tile_batches == 0
    assert all(r.top_class == "sharp" and r.confidence == pytest.approx(0.97) for r in results)


def test_a_file_gone_before_its_tiles_keeps_the_whole_frame_answer(
    bundled: BlurClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = _Scripted(bundled, [0.10, 0.05, 0.05, 0.80], UNIFORM_TILES)
    paths = _files(tmp_path, 3)

    def vanished(path: str, spec: InputSpec) -> Image.Image:
        raise UnreadableImageError("file not found")

    monkeypatch.setattr(engine.model, "open_image", vanished)  # only the tiles' second read goes through it
    results = [*pipeline.classify_paths(clf, paths, workers=2, batch_size=2), clf.classify(paths[0])]
    assert [r.ok for r in results] == [True] * 4
    assert all(r.top_class == "sharp" and r.confidence == pytest.approx(0.80) for r in results)
    assert clf.tile_batches == 0


def test_bundled_model_with_and_without_the_check(bundled: BlurClassifier, tmp_path: Path) -> None:
    plain = load_classifier(config=EngineConfig(tile_check=None))
    img = scene(1, (600, 400))  # a smooth toy scene: the whole frame gives defocus some probability
    p = tmp_path / "scene.png"
    img.save(p)
    whole = np.array([plain.classify(p).probabilities[n] for n in bundled.names])
    assert bundled.wants_tiles(whole)
    assert bundled.tile_check is not None
    expected = bundled.tile_check.fuse(whole, bundled.predict(bundled.tile_inputs(img)), bundled.names)
    checked = bundled.classify(p).probabilities
    assert [checked[n] for n in bundled.names] == pytest.approx(list(expected), abs=1e-5)
    assert not np.allclose(expected, whole, atol=1e-3)  # the tiles did change this one


@pytest.mark.parametrize(("size", "tiles_from", "whole_from"), [
    ((2048, 1365), (1024, 683), (2048, 1365)),  # an export: tiles at half scale (512 x 341 px each), whole in full
    ((6000, 4000), (1500, 1000), (750, 500)),  # a camera original: tiles at 1/4, the whole frame at 1/8
    ((800, 533), (800, 533), (800, 533)),  # small: never reduced
])
def test_tiles_decode_at_their_own_scale(tmp_path: Path, size: tuple[int, int], tiles_from: tuple[int, int],
                                         whole_from: tuple[int, int]) -> None:
    from engine.preprocess import open_image

    p = tmp_path / "frame.jpg"
    Image.new("RGB", size, (120, 130, 140)).save(p, quality=90)
    spec = InputSpec(size=224, resize="stretch")
    assert open_image(p, TileCheck().decode_spec(spec)).size == tiles_from
    assert open_image(p, spec).size == whole_from


def test_the_decision_rule_names_the_check_and_its_settings(bundled: BlurClassifier) -> None:
    plain = load_classifier(config=EngineConfig.whole_frame())
    stricter = load_classifier(config=EngineConfig(tile_check=TileCheck(gate=0.2)))
    unlifted = load_classifier(config=EngineConfig(veil_gate=None))
    undarkened = load_classifier(config=EngineConfig(dark_gate=None))
    unoverruled = load_classifier(config=EngineConfig(tile_check=TileCheck(overrule_gate=None)))
    rules = {bundled.decision_rule, plain.decision_rule, stricter.decision_rule, unlifted.decision_rule,
             undarkened.decision_rule, unoverruled.decision_rule}
    assert len(rules) == 6
    assert plain.decision_rule == "whole frame" and "gate 0.1" in bundled.decision_rule
