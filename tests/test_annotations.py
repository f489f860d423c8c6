import json

import pytest

from lego_core.data.annotations import (
    EGO4D, EPIC, Offsets, epic_frames_fps, parse_timestamp, read_annotations, read_boxes_jsonl,
)
from lego_core.data.labels import authors_ego4d_action, clean_narration, lemmatize_verb, verb_from_structured
from lego_core.errors import BadInput


def test_epic_csv_rule_and_meta(data_dir):
    actions, rejects = read_annotations(EPIC, data_dir / "EPIC_100_train_excerpt.csv")
    assert rejects == []
    assert len(actions) == 70
    first = actions[0]   # P01_09_0: 00:00:01.14 -> 00:00:03.00, "adjust lights"
    assert first.key == "epic-kitchens-P01_09-P01_09_0"
    assert first.label == "adjust lights" and first.verb == "adjust" and first.noun == "light"
    assert first.t_input == pytest.approx(1.14 - 0.25)
    assert first.t_target == pytest.approx(1.14 + 0.6 * (3.00 - 1.14))
    multi = next(a for a in actions if a.action_id == "P01_09_100")
    assert multi.extra["all_nouns"] == ["flour", "counter"]
    assert multi.extra["verb_class"] == 9 and multi.extra["noun_class"] == 75
    # rows without a narration_timestamp are ordinary rows
    assert any(a.action_id == "P22_14_24" for a in actions)


def test_epic_offsets_are_options_and_input_clamped_at_zero(data_dir, tmp_path):
    csv = (data_dir / "EPIC_100_train_excerpt.csv").read_text().splitlines()
    csv.append("P01_09_900,P01,P01_09,,00:00:00.10,00:00:01.10,6,66,open door,open,3,door,8,['door'],[8]")
    path = tmp_path / "a.csv"
    path.write_text("\n".join(csv) + "\n")
    actions, _ = read_annotations(EPIC, path, offsets=Offsets(input_before_start=0.5, target_fraction=0.5))
    early = next(a for a in actions if a.action_id == "P01_09_900")
    assert early.t_input == 0.0
    assert early.t_target == pytest.approx(0.6)


def test_epic_bad_rows_are_rejected_with_reasons(tmp_path, data_dir):
    header = (data_dir / "EPIC_100_train_excerpt.csv").read_text().splitlines()[0]
    rows = [
        "P01_01_1,P01,P01_01,,00:00:05.00,00:00:04.00,300,240,take cup,take,0,cup,13,['cup'],[13]",
        "P01_01_2,P01,P01_01,,00:00:xx,00:00:06.00,300,360,take cup,take,0,cup,13,['cup'],[13]",
        "P01_01_3,P01,P01_01,,00:00:05.00,00:00:06.00,300,360,take cup,take,0,cup,13,['cup'],[13]",
        "P01_01_3,P01,P01_01,,00:00:05.00,00:00:06.00,300,360,take cup,take,0,cup,13,['cup'],[13]",
    ]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    actions, rejects = read_annotations(EPIC, path)
    assert [a.action_id for a in actions] == ["P01_01_3"]
    assert sorted(r.reason for r in rejects) == ["duplicate key", "stop before start", "unparsable time"]


def test_wrong_format_is_bad_input(data_dir, tmp_path):
    with pytest.raises(BadInput, match="not an Ego4D FHO annotation file"):
        read_annotations(EGO4D, data_dir / "EPIC_100_train_excerpt.csv")
    with pytest.raises(BadInput, match="not an EPIC-KITCHENS-100 annotation CSV"):
        read_annotations(EPIC, data_dir / "ego4d_fho_main_excerpt.json")
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BadInput, match="not an EPIC-KITCHENS-100"):
        read_annotations(EPIC, tmp_path / "bin.csv")
    with pytest.raises(BadInput, match="not found"):
        read_annotations(EPIC, tmp_path / "missing.csv")


def test_ego4d_pre15_to_pnr_with_boxes_and_clean_labels(data_dir):
    actions, rejects = read_annotations(EGO4D, data_dir / "ego4d_fho_main_excerpt.json")
    assert len(actions) == 12
    assert sorted(r.reason for r in rejects) == ["no critical frames"] * 2 + ["rejected action"] * 2
    a = actions[0]
    assert a.label == "cut onion" and a.verb == "cut" and a.noun == "onion"
    assert a.t_input == pytest.approx(292 / 30) and a.t_target == pytest.approx(329 / 30)
    assert a.extra["frame_input"] == 292 and a.extra["frame_target"] == 329
    kinds = [b["kind"] for b in a.boxes]
    assert kinds == ["left_hand", "right_hand", "object_of_change"]
    # pre_15's left hand: x=95 y=570 w=128 h=134 on 1920x1080
    assert a.boxes[0]["box"] == pytest.approx([95 / 1920, 570 / 1080, 223 / 1920, 704 / 1080], abs=1e-4)
    assert a.boxes[2]["name"] == "onion"
    assert any(x.label == "turn on tap" and x.verb == "turn on" for x in actions)


def test_boxes_file_for_epic(data_dir, tmp_path):
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(json.dumps({"narration_id": "P01_09_0", "boxes": [
        {"kind": "left_hand", "box": [0.1, 0.2, 0.3, 0.4]},
        {"kind": "object", "name": "light", "box": [0, 0, 1, 1]}]}) + "\n")
    actions, _ = read_annotations(EPIC, data_dir / "EPIC_100_train_excerpt.csv", boxes_file=boxes)
    assert actions[0].boxes[1] == {"kind": "object", "name": "light", "box": [0.0, 0.0, 1.0, 1.0]}
    assert actions[1].boxes == []
    boxes.write_text("{not json\n")
    with pytest.raises(BadInput, match="boxes.jsonl:1"):
        read_boxes_jsonl(boxes)


@pytest.mark.parametrize("text, verb, expected", [
    ("#C C cuts the onion", "cut_(something)", "cut onion"),
    ("#C C turn_ons the tap", "turn_on_(something)", "turn on tap"),
    ("#c c carries a box.", None, "carry box"),
    ("#C C washes the pan", None, "wash pan"),
    ("#C C picks up the knife from the table", "pick_up_(something)", "pick up knife from table"),
    ("#C C presses the button", None, "press button"),
])
def test_clean_narration(text, verb, expected):
    assert clean_narration(text, verb) == expected


@pytest.mark.parametrize("narration, expected", [
    ("#C C cuts the onion", "cut the onion"),             # the article kept, as the authors asked
    ("#C C Picks up a knife from the table", "pick up a knife from the table"),
    ("#C C washes", "wash"),
    ("#C C has a look at the pan", "have a look at the pan"),
    ("#C C turn_ons the tap", "turn_on the tap"),         # WordNet knows the verb "turn_on" too
])
def test_authors_ego4d_action_is_their_question_wording(narration, expected):
    assert authors_ego4d_action(narration) == expected


def test_lemmas_and_structured_verbs():
    assert [lemmatize_verb(w) for w in ["goes", "tries", "mixes", "is", "opens", "press"]] == \
        ["go", "try", "mix", "is", "open", "press"]
    assert verb_from_structured("put_(place,_leave,_drop)") == "put"
    assert verb_from_structured(None) == ""


def test_timestamps_and_frame_rates():
    assert parse_timestamp("00:05:32.22") == pytest.approx(332.22)
    assert parse_timestamp("01:00:00") == 3600
    with pytest.raises(ValueError):
        parse_timestamp("5.2")
    assert epic_frames_fps("P01_11") == 60 and epic_frames_fps("P01_101") == 50 and epic_frames_fps("P37_103") == 50
