"""Model-card metrics and the side-by-side comparison, on hand-made evaluation reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.card import compare_evaluations, headline


def _pred(name: str, label: str, kind: str, top: str, strength: float = 0.0, group: str = "scene:a") -> dict:
    return {"path": f"/data/{name}.png", "label": label, "kind": kind, "strength_px": strength, "group": group,
            "top_class": top, "probabilities": {}}


def _report(preds: list[dict], by_strength: dict | None = None) -> dict:
    return {"predictions": preds, "by_strength": by_strength or {}}


def _two_models() -> tuple[dict, dict]:
    common = [
        _pred("race1", "sharp", "clean", "sharp", group="race05/runnerbar"),
        _pred("race2", "sharp", "clean", "motion_blurred", group="race05/runnerbar"),
        _pred("bokeh1", "sharp", "bokeh", "sharp", 20.0),
        _pred("faint", "defocused_blurred", "defocus", "sharp", 5.0),  # below the visible floor: not counted
    ]
    a = common + [
        _pred("d1", "defocused_blurred", "defocus", "defocused_blurred", 12.0),
        _pred("d2", "defocused_blurred", "defocus", "sharp", 9.0),
        _pred("m1", "motion_blurred", "shake", "motion_blurred", 30.0),
    ]
    b = [dict(p) for p in common] + [
        _pred("d1", "defocused_blurred", "defocus", "sharp", 12.0),
        _pred("d2", "defocused_blurred", "defocus", "defocused_blurred", 9.0),
        _pred("m1", "motion_blurred", "shake", "defocused_blurred", 30.0),  # wrong type is a miss
    ]
    b[1]["top_class"] = "sharp"  # model B does not flag race2
    return _report(a, {"defocus": {"8-12px": {"count": 0, "total": 1}}}), \
        _report(b, {"defocus": {"8-12px": {"count": 1, "total": 1}}})


def test_headline_counts_visible_blur_and_flagged_sharp():
    a, _ = _two_models()
    rows = {check: (k, n) for check, _, k, n in headline(a["predictions"])}
    assert rows["real sharp race photos (held-out races) flagged as any blur"] == (1, 2)
    assert rows["synthetic bokeh negatives flagged"] == (0, 1)
    assert rows["synthetic defocus ≥ 8 px, right type"] == (1, 2)  # the 5-px example is below the floor
    assert rows["**motion_blurred** (all its kinds, visible strength)"] == (1, 1)


def test_compare_puts_models_side_by_side_with_paired_counts():
    a, b = _two_models()
    md = compare_evaluations([("224", a), ("320", b)])
    assert "| check | target | 224 | 320 |" in md
    assert "| real sharp race photos (held-out races) flagged as any blur | ≤ 1% | 50.0% (1/2) | 0.0% (0/2) |" in md
    assert "| defocus | 8-12px | 0/1 | 1/1 |" in md
    assert "- sharp: 224 only 0, 320 only 1" in md
    assert "- visible blur: 224 only 2, 320 only 1" in md


def test_compare_without_matching_images_skips_paired_counts():
    a, b = _two_models()
    b["predictions"] = b["predictions"][:-1]
    assert "no paired counts" in compare_evaluations([("a", a), ("b", b)])
    with pytest.raises(ValueError):
        compare_evaluations([("a", a)])


def test_paired_counts_keep_same_named_photos_of_two_classes_apart():
    def rep(top_sharp: str, top_blur: str) -> dict:
        return _report([{**_pred("x", "sharp", "clean", top_sharp), "path": "/d/val/sharp/IMG_1.jpg"},
                        {**_pred("x", "motion_blurred", "shake", top_blur, 30.0),
                         "path": "/d/val/motion_blurred/IMG_1.jpg"}])
    md = compare_evaluations([("a", rep("sharp", "sharp")), ("b", rep("motion_blurred", "motion_blurred"))])
    assert "on the same 2 images" in md
    assert "- sharp: a only 1, b only 0" in md
    assert "- visible blur: a only 0, b only 1" in md


def test_compare_command_prints_markdown_and_rejects_bad_arguments(tmp_path: Path):
    a, b = _two_models()
    (tmp_path / "a.json").write_text(json.dumps(a), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(b), encoding="utf-8")
    cmd = [sys.executable, "-m", "trainer.cli", "compare"]
    ok = subprocess.run(cmd + [f"A={tmp_path / 'a.json'}", f"B={tmp_path / 'b.json'}"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("| check | target | A | B |")
    bad = subprocess.run(cmd + [str(tmp_path / "a.json"), f"B={tmp_path / 'b.json'}"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "NAME=EVAL.json" in bad.stderr
    (tmp_path / "other.json").write_text(json.dumps({"names": []}), encoding="utf-8")
    other = subprocess.run(cmd + [f"A={tmp_path / 'a.json'}", f"X={tmp_path / 'other.json'}"],
                           capture_output=True, text=True, check=False)
    assert other.returncode == 1 and "not a report" in other.stderr


def test_a_reader_that_went_away_gets_no_error_message(tmp_path: Path):
    a, b = _two_models()
    (tmp_path / "a.json").write_text(json.dumps(a), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(b), encoding="utf-8")
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "trainer.cli", "compare", f"A={tmp_path / 'a.json'}",
                               f"B={tmp_path / 'b.json'}"], stdout=write_end, stderr=subprocess.PIPE, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == b""  # neither a traceback nor "error: Broken pipe"


def _probs(name: str, label: str, kind: str, strength: float, **probs: float) -> dict:
    full = {"defocused_blurred": 0.0, "defocused_object_portrait": 0.0, "motion_blurred": 0.0, "sharp": 0.0, **probs}
    top = max(full, key=lambda c: full[c])
    return {**_pred(name, label, kind, top, strength), "probabilities": full}


def test_blur_right_at_equal_false_alarms_moves_the_sharp_weight():
    from trainer.card import blur_right_at_false_alarms

    preds = [
        _probs("s1", "sharp", "clean", 0.0, sharp=0.4, motion_blurred=0.6),  # t = 1.5: flagged at w = 1
        _probs("s2", "sharp", "clean", 0.0, sharp=0.8, defocused_blurred=0.2),  # t = 0.25
        _probs("b1", "motion_blurred", "shake", 30.0, sharp=0.3, motion_blurred=0.7),  # t = 2.33
        _probs("b2", "motion_blurred", "shake", 30.0, sharp=0.45, motion_blurred=0.55),  # t = 1.22
        _probs("b3", "defocused_blurred", "defocus", 12.0, sharp=0.1, motion_blurred=0.9),  # wrong type: never right
        _probs("faint", "defocused_blurred", "defocus", 4.0, sharp=0.1, defocused_blurred=0.9),  # below visible
    ]
    assert blur_right_at_false_alarms(preds, 0) == (1, pytest.approx(1.5))  # w 1.5 clears s1 and also loses b2
    assert blur_right_at_false_alarms(preds, 1) == (2, pytest.approx(0.25))
    assert blur_right_at_false_alarms(preds, 2) == (2, 0.0)
    assert blur_right_at_false_alarms([_pred("x", "sharp", "clean", "sharp")], 0) is None  # no probabilities

    md = compare_evaluations([("a", _report(preds)), ("b", _report(preds))])
    assert "at most k of the 2 sharp images are flagged" in md and "Visible blur right (of 3)" in md
    assert "| 0 | 1 (w 1.5) | 1 (w 1.5) |" in md
    a, b = _two_models()
    assert "equal false alarms" not in compare_evaluations([("a", a), ("b", b)])  # hand-made reports: no probabilities


def test_real_blurred_photos_count_at_equal_false_alarms_as_in_the_paired_counts():
    from trainer.card import blur_right_at_false_alarms

    preds = [
        _probs("s1", "sharp", "original", 0.0, sharp=0.9, motion_blurred=0.1),
        _probs("real", "motion_blurred", "original", 0.0, sharp=0.2, motion_blurred=0.8),  # a user's own blurred photo
    ]
    assert blur_right_at_false_alarms(preds, 0) == (1, pytest.approx(0.1 / 0.9))
    md = compare_evaluations([("a", _report(preds)), ("b", _report(preds))])
    assert "Visible blur right (of 1)" in md and "- visible blur: a only 0, b only 0" in md


def _write_test_manifest(root: Path, specs: list[tuple]) -> None:
    """A prepared dataset's test split: one small synthetic JPEG and manifest row per (kind, label, strength, params)
    or (kind, label, strength, params, source photo); the source is "src.jpg" where not given."""
    import csv
    from dataclasses import asdict

    from PIL import Image

    from trainer.dataset import MANIFEST, ManifestRow

    rows = []
    for i, (kind, label, strength, params, *source) in enumerate(specs):
        synth = f"synth/test/{label}/{i}_{kind}.jpg"
        (root / synth).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), (40 * i, 90, 120)).save(root / synth)
        rows.append(ManifestRow("test", label, f"test/{label}/{i}.png", source[0] if source else "src.jpg", f"scene:{i}",
                                kind, strength, synth, json.dumps(params)))
    with open(root / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ManifestRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def test_card_reports_the_subject_kinds_by_the_runners_share_of_the_frame(tmp_path: Path):
    """The synthesis records `subject_share`; evaluation keeps it in each prediction, and the card bins the subject
    blurs at visible strength by it (rows without a share, invisible strengths and other kinds left out)."""
    from trainer.card import card_metrics, subject_share_bins
    from trainer.evaluate import evaluate, write_report

    _write_test_manifest(tmp_path, [
        ("subject_defocus", "defocused_object_portrait", 12.0, {"subject_share": 0.02}),
        ("subject_defocus", "defocused_object_portrait", 12.0, {"subject_share": 0.4}),
        ("subject_defocus", "defocused_object_portrait", 4.0, {"subject_share": 0.4}),   # below visible: left out
        ("subject_motion", "motion_blurred", 30.0, {"subject_share": 0.1}),
        ("subject_motion", "motion_blurred", 30.0, {}),                                 # no share recorded
        ("panning", "sharp", 40.0, {"subject_share": 0.1}),                             # not a subject blur
    ])

    rep = evaluate(None, tmp_path, "test")   # the bundled model; only the bins are checked, not its verdicts
    assert [p["subject_share"] for p in rep.predictions] == [0.02, 0.4, 0.4, 0.1, 0.0, 0.1]
    bins = subject_share_bins(rep.predictions)
    assert {k: {b: n for b, (_, n) in v.items()} for k, v in bins.items()} == {
        "subject_defocus": {"0%-3%": 1, ">=25%": 1}, "subject_motion": {"6%-12%": 1}}
    right = {p["path"].rsplit("/", 1)[1]: p["top_class"] == p["label"] for p in rep.predictions}
    assert bins["subject_defocus"][">=25%"][0] == right["1_subject_defocus.jpg"]
    for name in ("test", "val", "triplets"):
        write_report(rep, tmp_path / f"evaluation_{name}.json")
    md = card_metrics(tmp_path)
    assert "- subject_defocus at visible strength by the runner's share of the frame: 0%-3%: " in md
    assert "- subject_motion at visible strength by the runner's share of the frame: 6%-12%: " in md


def test_card_reports_the_subject_kinds_on_a_sharp_and_on_a_soft_background(tmp_path: Path):
    """Held-out subject blurs record how sharp the rest of their frame was; the card counts them on either side of
    SOFT_BACKGROUND at visible strength (a flat background, 0.0, is soft, not unrecorded)."""
    from trainer.card import SOFT_BACKGROUND, card_metrics, subject_background_split
    from trainer.evaluate import evaluate, write_report

    _write_test_manifest(tmp_path, [
        ("subject_defocus", "defocused_object_portrait", 12.0, {"background_sharpness": 0.3}),
        ("subject_defocus", "defocused_object_portrait", 12.0, {"background_sharpness": 0.0}),
        ("subject_defocus", "defocused_object_portrait", 12.0, {}),                           # not recorded
        ("subject_motion", "motion_blurred", 10.0, {"background_sharpness": 0.3}),             # below visible
        ("subject_motion", "motion_blurred", 30.0, {"background_sharpness": SOFT_BACKGROUND}),
    ])
    rep = evaluate(None, tmp_path, "test")   # the bundled model; only the split is checked, not its verdicts
    assert [p["background_sharpness"] for p in rep.predictions] == [0.3, 0.0, None, 0.3, SOFT_BACKGROUND]
    split = subject_background_split(rep.predictions)
    assert {k: {b: n for b, (_, n) in v.items()} for k, v in split.items()} == {
        "subject_defocus": {"background >= 0.05": 1, "background < 0.05": 1},
        "subject_motion": {"background >= 0.05": 1}}
    for name in ("test", "val", "triplets"):
        write_report(rep, tmp_path / f"evaluation_{name}.json")
    assert "- subject_defocus at visible strength by how sharp the rest of the frame is" in card_metrics(tmp_path)


def test_card_reports_the_subject_kinds_by_the_audit_of_their_masks(tmp_path: Path):
    """Evaluation looks up the source photo of each example made through a person mask in the committed audit (by the
    end of its path, wherever the shared folder is); the card counts the subject kinds at visible strength by its
    verdict, the main subject split by its background, and the bokeh and panning negatives flagged by it; kinds made
    without the mask and unlisted photos get no verdict."""
    from trainer.card import card_metrics, negative_audit_split, subject_audit_split
    from trainer.evaluate import evaluate, format_report, load_subject_audit, write_report

    audit = load_subject_audit()
    by_verdict = {v: next(p for p, w in audit.items() if w == v) for v in ("main", "not_main", "unclear")}
    shared = "/somewhere/shared/data/"
    _write_test_manifest(tmp_path, [
        ("subject_defocus", "defocused_object_portrait", 12.0, {"background_sharpness": 0.3},
         shared + by_verdict["main"]),
        ("subject_defocus", "defocused_object_portrait", 12.0, {"background_sharpness": 0.01},
         shared + by_verdict["main"]),
        ("subject_defocus", "defocused_object_portrait", 12.0, {"background_sharpness": 0.3},
         shared + by_verdict["not_main"]),
        ("subject_motion", "motion_blurred", 30.0, {"background_sharpness": 0.3}, shared + by_verdict["unclear"]),
        ("subject_motion", "motion_blurred", 30.0, {"background_sharpness": 0.3}, shared + "person_masks/images/1.jpg"),
        ("subject_motion", "motion_blurred", 30.0, {}, "x" + by_verdict["main"]),   # another photo's name ends alike
        ("bokeh", "sharp", 8.0, {}, shared + by_verdict["main"]),                   # a hard negative
        ("panning", "sharp", 30.0, {}, shared + by_verdict["not_main"]),
        ("defocus", "defocused_blurred", 12.0, {}, shared + by_verdict["main"]),     # made without the mask
    ])
    rep = evaluate(None, tmp_path, "test")   # the bundled model; only the split is checked, not its verdicts
    assert [p["subject_audit"] for p in rep.predictions] == [
        "main", "main", "not_main", "unclear", None, None, "main", "not_main", None]
    negatives = negative_audit_split(rep.predictions)
    assert {k: {b: n for b, (_, n) in v.items()} for k, v in negatives.items()} == {
        "bokeh": {"main subject": 1}, "panning": {"not the main subject": 1}}
    assert negatives["panning"]["not the main subject"][0] == (rep.predictions[7]["top_class"] != "sharp")
    split = subject_audit_split(rep.predictions)
    assert {k: {b: n for b, (_, n) in v.items()} for k, v in split.items()} == {
        "subject_defocus": {"main subject, background >= 0.05": 1, "main subject, background < 0.05": 1,
                            "not the main subject": 1},
        "subject_motion": {"no single subject": 1, "not audited": 2}}
    right = {p["path"].rsplit("/", 1)[1]: p["top_class"] == p["label"] for p in rep.predictions}
    assert split["subject_defocus"]["not the main subject"][0] == right["2_subject_defocus.jpg"]
    assert "  subject_motion: no single subject " in format_report(rep)
    for name in ("test", "val", "triplets"):
        write_report(rep, tmp_path / f"evaluation_{name}.json")
    md = card_metrics(tmp_path)
    assert ("- subject_defocus at visible strength by the audit of the photo's mask (trainer/subject_audit.csv): "
            "main subject, background >= 0.05: ") in md
    assert "- panning negatives flagged, by the audit of the photo's mask: not the main subject: " in md


def test_the_subject_audit_holds_known_verdicts_and_refuses_others(tmp_path: Path):
    """The committed audit reads (comment lines skipped) with one of its three verdicts per photo; a file with another
    verdict is refused with the photo named, and a missing file (an installed wheel) is an empty audit."""
    from trainer.evaluate import AUDIT_VERDICTS, audit_verdict, load_subject_audit

    audit = load_subject_audit()
    assert len(audit) >= 80 and set(audit.values()) == set(AUDIT_VERDICTS)
    assert all(not p.startswith("/") and p.endswith((".jpg", ".png")) for p in audit)
    bad = tmp_path / "audit.csv"
    bad.write_text("# note\nphoto,verdict,note\nrace/a.jpg,main,\nrace/b.jpg,blurry,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="race/b.jpg"):
        load_subject_audit(bad)
    assert load_subject_audit(tmp_path / "none.csv") == {}
    assert audit_verdict("/x/race/a.jpg", {"race/a.jpg": "main"}) == "main"
    assert audit_verdict("/x/prace/a.jpg", {"race/a.jpg": "main"}) is None


def test_the_audited_kinds_are_the_kinds_made_through_the_mask():
    """Evaluation and planning keep a list of the mask kinds that does not load OpenCV: it must not drift from the
    synthesis's own."""
    from trainer import dataset, synthesis

    assert dataset.MASK_KINDS == synthesis.MASK_KINDS


def test_evaluation_reports_shake_recall_by_extent_as_well_as_by_path_length(tmp_path: Path):
    """An oscillating shake path doubles back, so its length (the strength) can be twice its spread: evaluation
    bins shake by the recorded `extent_px` too, and the card prints both (other kinds have no extent bins)."""
    from trainer.card import card_metrics
    from trainer.evaluate import evaluate, format_report, write_report

    _write_test_manifest(tmp_path, [
        ("shake", "motion_blurred", 26.0, {"extent_px": 14.0}),
        ("shake", "motion_blurred", 50.0, {"extent_px": 40.0}),
        ("shake", "motion_blurred", 30.0, {}),                       # a manifest without the extent: no extent bin
        ("linear_motion", "motion_blurred", 30.0, {"angle": 10.0}),
        ("clean", "sharp", 0.0, {}),
    ])

    rep = evaluate(None, tmp_path, "test")   # the bundled model; only the bins are checked, not its verdicts
    assert [b for b in rep.by_strength["shake"]] == ["24-32px", "48-64px"]
    assert rep.by_strength["shake"]["24-32px"].total == 2
    assert list(rep.by_extent) == ["shake"]
    assert {b: i.total for b, i in rep.by_extent["shake"].items()} == {"12-16px": 1, "32-48px": 1}
    assert [p["extent_px"] for p in rep.predictions if p["kind"] == "shake"] == [14.0, 40.0, 0.0]
    assert "right class by blur extent" in format_report(rep)
    write_report(rep, tmp_path / "evaluation_test.json")
    write_report(rep, tmp_path / "evaluation_val.json")
    write_report(rep, tmp_path / "evaluation_triplets.json")
    md = card_metrics(tmp_path)
    assert "- shake by extent (the path's end-to-end spread; its length above): 12-16px: " in md
    assert "- linear_motion by extent" not in md
