"""The synthetic kitchen: only the action changes the frame, strongly, and its videos extract exactly."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_lego
from lego_core.curate.template import describe, third_person
from lego_core.kit.world import OBJECTS, PALM, Layout, Placed, make_layout, render
from lego_core.kit.world_data import WorldConfig, make_world, plan_world, world_samples

W = H = 160


def unit(a):
    return np.asarray(a, np.float64) / 255


def every_action():
    """One layout per object (alone on the counter, left of centre) and each of its verbs."""
    for name, (kind, w, h, verbs) in OBJECTS.items():
        for is_open in ((False, True) if kind == "door" else (False,)):
            x0, y0 = 0.2, 0.79 - h if name != "tap" else 0.16
            layout = Layout([Placed(name, (x0, y0, x0 + w, y0 + h), is_open=is_open)])
            for verb in layout.objects[0].verbs():
                yield layout, verb, name


@pytest.mark.parametrize("layout,verb,name", list(every_action()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_end_state_differs_strongly_from_what_it_covers(layout, verb, name):
    before, after = unit(render(layout, W, H)), unit(render(layout, W, H, (verb, name)))
    # the object's change alone: the hands drawn at rest in both frames, so only the state differs
    changed_only = unit(render(layout, W, H, (verb, name), move_hand=False))
    diff = np.abs(changed_only - before).mean(-1)
    mask = diff > 0.1
    assert mask.mean() > 0.005, "the action changes almost nothing"
    assert diff[mask].mean() >= 0.25, f"{verb} {name}: mean change {diff[mask].mean():.3f} over {mask.sum()} px"
    assert np.abs(after - before).mean() > 0


def test_only_the_acting_hand_and_object_change():
    rng = np.random.default_rng(3)
    for _ in range(20):
        layout = make_layout(rng, tuple(OBJECTS), 4)
        for verb, name in layout.actions():
            x, y = unit(render(layout, W, H)), unit(render(layout, W, H, (verb, name)))
            target = layout.find(name)
            idle = 1 if target.hand == "left" else 0                   # the other hand
            cx, cy = layout.rest[idle]
            box = (slice(int((cy - PALM[1] / 2) * H) + 1, int((cy + PALM[1] / 2) * H) - 1),
                   slice(int((cx - PALM[0] / 2) * W) + 1, int((cx + PALM[0] / 2) * W) - 1))
            assert np.array_equal(x[box], y[box]), f"{verb} {name}: the idle hand moved"
            for other in layout.objects:                                 # untouched objects stay
                if other.name == name or abs(other.centre[0] - target.centre[0]) < 0.25:
                    continue
                ob = (slice(int(other.box[1] * H), int(other.box[3] * H)),
                      slice(int(other.box[0] * W), int(other.box[2] * W)))
                assert np.array_equal(x[ob], y[ob]), f"{verb} {name} changed the {other.name}"


def test_the_acting_hand_is_on_the_objects_side_and_descriptions_say_so():
    cfg = WorldConfig(clips=6, test_clips=2)
    for s in world_samples(cfg, "train"):
        meta = json.loads(s["meta.json"])
        obj = next(b for b in meta["boxes"] if b["kind"] == "object_of_change")
        side = "left" if (obj["box"][0] + obj["box"][2]) / 2 < 0.5 else "right"
        x, y = (unit(Image.open(io.BytesIO(s[k])).convert("RGB")) for k in ("input.jpg", "target.jpg"))
        rest = next(b["box"] for b in meta["boxes"] if b["kind"] == f"{side}_hand")
        sl = (slice(int(rest[1] * H) + 2, int(rest[3] * H) - 2), slice(int(rest[0] * W) + 2, int(rest[2] * W) - 2))
        assert np.abs(x[sl] - y[sl]).mean() > 0.1, "the acting hand should leave its rest place"
        d = describe(meta["label"], meta["noun"], meta["boxes"])
        assert d.startswith(f"The {side} hand {third_person(meta['verb'])} the {meta['noun']}"), d
        assert any(p in d for p in ("on the left", "in the centre", "on the right")) and "In the end" in d


def test_a_place_margin_keeps_objects_off_the_thirds_edges_and_zero_changes_nothing():
    centres = [(o.box[0] + o.box[2]) / 2 for c in plan_world(WorldConfig(clips=60, place_margin=0.05))
               for o in c.layout.objects]
    assert len(centres) > 150 and min(min(abs(x - 1 / 3), abs(x - 2 / 3)) for x in centres) >= 0.05
    plain = [c.layout.objects for c in plan_world(WorldConfig(clips=20))]
    assert plain == [c.layout.objects for c in plan_world(WorldConfig(clips=20, place_margin=0.0))]
    near = [(o.box[0] + o.box[2]) / 2 for objs in plain for o in objs]
    assert any(min(abs(x - 1 / 3), abs(x - 2 / 3)) < 0.05 for x in near)     # without it, some are


def test_world_videos_extract_to_the_rendered_frames_in_both_formats(tmp_path):
    cfg = WorldConfig(clips=4, test_clips=2, width=96, height=96)
    paths = make_world(tmp_path / "w", cfg)
    held_out = sorted(c.video_id for c in plan_world(cfg) if c.test)
    assert json.loads(open(paths["split"]).read())["test_videos"] == held_out
    for dataset, ann, videos, extra in (
            ("epic-kitchens", paths["epic_csv"], paths["epic_videos"], ["--boxes", paths["epic_boxes"]]),
            ("ego4d", paths["ego4d_json"], paths["ego4d_videos"], [])):
        r = run_lego("-q", "extract", "--dataset", dataset, "--annotations", ann, "--videos", videos, *extra,
                     "--size", "0", "--out", str(tmp_path / f"{dataset}-%06d.tar"))
        assert r.returncode == 0, r.stderr
    from lego_core.data.shards import iter_samples

    rendered = {}
    for split in ("train", "test"):
        for s in world_samples(cfg, split):
            m = json.loads(s["meta.json"])
            rendered[(m["video_id"], m["label"])] = s
    got = list(iter_samples([str(tmp_path / "epic-kitchens-000000.tar"), str(tmp_path / "ego4d-000000.tar")]))
    assert len(got) == len(rendered) == 12
    for s in got:
        m = json.loads(s["meta.json"])
        ref = rendered[(m["video_id"], m["label"])]
        assert m["boxes"] and {b["kind"] for b in m["boxes"]} >= {"left_hand", "right_hand", "object_of_change"}
        for k in ("input.jpg", "target.jpg"):
            a, b = (unit(Image.open(io.BytesIO(v[k])).convert("RGB")) for v in (s, ref))
            assert np.abs(a - b).mean() < 0.03, (s["__key__"], k)   # the same frame, up to H.264 + JPEG
