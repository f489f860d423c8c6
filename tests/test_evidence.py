"""lego_core.evidence: the learning checks score what they claim (fast, no model)."""

import numpy as np
from PIL import Image

from lego_core import evidence
from lego_core.evidence import Case


def frame(colour, box=None, fill=None, size=32):
    a = np.zeros((size, size, 3), np.uint8) + np.array(colour, np.uint8)
    if box:
        x0, y0, x1, y1 = box
        a[y0:y1, x0:x1] = fill
    return Image.fromarray(a)


def case(key="k", wrong=True):
    x = frame((60, 60, 60))
    y = frame((60, 60, 60), (4, 4, 12, 12), (250, 250, 250))
    c = Case(key=key, input=x, target=y, verb="cut", noun="onion", label="cut onion",
             boxes=[{"kind": "object_of_change", "box": [0.1, 0.1, 0.3, 0.3]}])
    if wrong:
        c.wrong = {"other_verb": "wash onion", "other_object": "cut tomato"}
    return c


def test_a_model_that_draws_the_true_change_passes_and_one_that_copies_the_input_fails():
    cases = [case(f"k{i}") for i in range(4)]

    def perfect(cs, labels, seeds):        # the true action drawn, wrong actions leave the frame as it was
        return [c.target if lab == c.label else c.input for c, lab in zip(cs, labels)]

    def copier(cs, labels, seeds):
        return [c.input for c in cs]

    good = evidence.measure(cases, perfect, round_trip=lambda im: im)
    assert all(c["passed"] for c in good["checks"]), good["checks"]
    assert good["summary"]["beats_input"] == 1.0 and good["summary"]["beats_other_verb"] == 1.0
    bad = evidence.measure(cases, copier, round_trip=lambda im: im)
    failed = {c["name"] for c in bad["checks"] if not c["passed"]}
    assert "psnr_changed gain over the input frame (dB)" in failed
    assert any(n.startswith("true − wrong action") for n in failed)


def test_ignoring_the_action_fails_the_wrong_action_checks():
    cases = [case(f"k{i}") for i in range(3)]
    same = evidence.measure(cases, lambda cs, labels, seeds: [c.target for c in cs])
    by_name = {c["name"]: c for c in same["checks"]}
    assert by_name["psnr_changed gain over the input frame (dB)"]["passed"]
    assert not by_name["true − wrong action (another verb, same object), psnr_changed (dB)"]["passed"]
    assert not by_name["true − wrong action (same verb, another object), psnr_changed (dB)"]["passed"]


def test_description_scores_need_verb_object_and_place():
    cases = [case("a"), case("b")]
    descriptions = ["The left hand cuts the onion on the left of the counter.", "The left hand cuts the onion."]
    assert evidence.description_scores(descriptions, cases) == {"verb_object": 1.0, "location": 0.5, "samples": 2}
    assert evidence.description_scores(["The hand washes a plate on the left."] * 2, cases)["verb_object"] == 0.0


def test_wrong_actions_come_from_the_label_not_the_datasets_verb_class(tmp_path):
    """EPIC's verb class for "pick up cup" is "take" (and Ego4D's for "turn on tap" "turn-on"):
    a wrong verb built from the class could be the true label again ("pick up cup" against
    itself), and the VLLM's "picks up the cup" would not count as naming the verb."""
    import json

    from lego_core.data.shards import ShardWriter
    from lego_core.kit.world import OBJECTS
    from lego_core.kit.world_data import WorldConfig, world_samples

    world = WorldConfig(clips=6, test_clips=6, objects=("cup", "plate", "tap"), verbs=("pick up", "wash", "turn on"),
                        objects_per_clip=3, actions_per_clip=3, width=32, height=32)
    scenes = {}
    with ShardWriter(str(tmp_path / "test-%06d.tar")) as w:
        for s in world_samples(world, "test"):
            meta = json.loads(s["meta.json"])
            meta["verb"] = {"pick up": "take", "turn on": "turn-on"}.get(meta["verb"], meta["verb"])
            scenes[meta["video_id"]] = ["cup", "plate", "tap"]
            w.write({**s, "meta.json": json.dumps(meta).encode()})
    cases = evidence.read_cases([str(tmp_path / "test-000000.tar")], scenes, lambda noun, verb: OBJECTS[noun][3])
    assert {c.label for c in cases} >= {"pick up cup", "turn on tap"}
    for c in cases:
        assert c.verb == c.label.rsplit(" ", 1)[0]
        assert c.label not in c.wrong.values()
        if c.label == "pick up cup":
            assert c.wrong == {"other_verb": "wash cup", "other_object": "pick up plate"}
        if c.noun == "tap":
            assert c.wrong == {}                    # the tap has no other verb, and nothing else turns on
    says = {"pick up": "picks up", "turn on": "turns on", "wash": "washes"}
    described = [f"The left hand {says[c.verb]} the {c.noun}." for c in cases]
    assert evidence.description_scores(described, cases)["verb_object"] == 1.0
