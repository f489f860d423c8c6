"""The sample schema: keys, meta.json, and a validator that names each kind of problem."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from lego_core.data import schema as S
from lego_core.errors import BadInput


def jpeg(w=16, h=12, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def npy(a) -> bytes:
    return S.encode_npy(a)


def meta(**over) -> dict:
    d = {
        "dataset": "epic-kitchens",
        "video_id": "P01_01",
        "action_id": "P01_01_7",
        "label": "cut onion",
        "verb": "cut",
        "noun": "onion",
        "t_input": 12.25,
        "t_target": 13.1,
        "fps": 50.0,
        "width": 1920,
        "height": 1080,
        "boxes": [
            {"kind": "left_hand", "box": [0.1, 0.5, 0.3, 0.9]},
            {"kind": "object", "name": "onion", "box": [0.4, 0.4, 0.6, 0.6]},
        ],
        "narration_id": "P01_01_7",
    }
    d.update(over)
    return d


def sample(full=False, **meta_over) -> dict:
    m = meta(**meta_over)
    s = {
        "__key__": S.make_key(m["dataset"], m["video_id"], m["action_id"]),
        "__url__": "x.tar",
        "input.jpg": jpeg(seed=1),
        "target.jpg": jpeg(seed=2),
        "meta.json": json.dumps(m).encode(),
    }
    if full:
        s["curated.txt"] = "The left hand holds the onion while the right hand cuts it.".encode()
        s["enriched.txt"] = "A person slices an onion on a board.".encode()
        s["vllm_img.npy"] = npy(np.zeros((6, 8), np.float16))
        s["vllm_txt.npy"] = npy(np.ones((3, 8), np.float16))
        s["input_latent.npy"] = npy(np.zeros((4, 2, 2), np.float32))
        s["target_latent.npy"] = npy(np.zeros((8, 2, 2), np.float16))
    return s


def test_make_key_sanitises():
    assert S.make_key("epic-kitchens", "P01_01", 7) == "epic-kitchens-P01_01-7"
    assert S.make_key("my data", "a/b.mp4", "x\ty") == "my_data-a_b_mp4-x_y"
    assert S.key_problem(S.make_key("a.b", "c", "d")) is None
    with pytest.raises(BadInput):
        S.make_key("ego4d", "", "3")


def test_fields_table_names_every_constant_without_inner_dots():
    names = [S.INPUT, S.TARGET, S.META, S.CURATED, S.ENRICHED, S.VLLM_IMG, S.VLLM_TXT, S.INPUT_LATENT, S.TARGET_LATENT]
    assert list(S.FIELDS) == names
    assert all(n.count(".") == 1 for n in names)
    assert S.REQUIRED == (S.INPUT, S.TARGET, S.META)


def test_good_samples_pass():
    assert S.validate_sample(sample()) == []
    assert S.validate_sample(sample(full=True), require=["curated.txt", "vllm_img.npy"], decode_images=True) == []
    # extras and unknown files are allowed
    s = sample(participant_id="P01", source="frames")
    s["depth.png"] = b"whatever"
    assert S.validate_sample(s) == []


def _problems(mutate, require=(), **kw):
    s = sample(full=True)
    mutate(s)
    return S.validate_sample(s, require, **kw)


def _meta_edit(**changes):
    def f(s):
        d = json.loads(s["meta.json"])
        for k, v in changes.items():
            if v is ...:
                d.pop(k)
            else:
                d[k] = v
        s["meta.json"] = json.dumps(d).encode()

    return f


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s.pop("__key__"), "__key__ is missing or empty"),
        (lambda s: s.update(__key__="a.b-c-d"), "__key__ contains '.', '/', '\\' or whitespace"),
        (lambda s: s.update(__key__="ego4d-x-y"),
         "__key__ does not match meta.json's {dataset}-{video_id}-{action_id}"),
        (lambda s: s.pop("input.jpg"), "input.jpg is missing"),
        (lambda s: s.pop("meta.json"), "meta.json is missing"),
        (lambda s: s.update({"target.jpg": b"\x89PNG\r\n\x1a\n...."}), "target.jpg: not a JPEG"),
        (lambda s: s.update({"input.jpg": s["input.jpg"][:-40]}), "input.jpg: JPEG is truncated (no end marker)"),
        (lambda s: s.update({"input.jpg": 12}), "input.jpg: not raw bytes"),
        (lambda s: s.update({"meta.json": b"{not json"}), "meta.json: not valid JSON"),
        (lambda s: s.update({"meta.json": b"[1, 2]"}), "meta.json: not a JSON object"),
        (_meta_edit(t_target=...), "meta.json: t_target is missing"),
        (_meta_edit(label=""), "meta.json: label is empty"),
        (_meta_edit(verb=3), "meta.json: verb is not a string"),
        (_meta_edit(t_input="12"), "meta.json: t_input is not a finite number (seconds)"),
        (_meta_edit(t_input=-1.0), "meta.json: t_input is negative"),
        (_meta_edit(t_input=20.0), "meta.json: t_input is after t_target"),
        (_meta_edit(fps=0), "meta.json: fps is not a positive number"),
        (_meta_edit(width=19.5), "meta.json: width is not a positive integer"),
        (_meta_edit(height=True), "meta.json: height is not a positive integer"),
        (_meta_edit(boxes=...), "meta.json: boxes is missing"),
        (_meta_edit(boxes={}), "meta.json: boxes is not a list"),
        (_meta_edit(boxes=[{"kind": "foot", "box": [0, 0, 1, 1]}]), "meta.json: a box has an unknown kind"),
        (_meta_edit(boxes=[{"kind": "tool", "box": [0, 0, 1]}]), "meta.json: a box is not [x0, y0, x1, y1] numbers"),
        (_meta_edit(boxes=[{"kind": "tool", "box": [0, 0, 1, 1.5]}]), "meta.json: a box coordinate is outside [0, 1]"),
        (_meta_edit(boxes=[{"kind": "hand", "box": [0.6, 0, 0.5, 1]}]), "meta.json: a box has x0 > x1 or y0 > y1"),
        (_meta_edit(boxes=[{"kind": "hand", "name": 3, "box": [0, 0, 1, 1]}]), "meta.json: a box name is not a string"),
        (lambda s: s.update({"curated.txt": b"  \n"}), "curated.txt: empty"),
        (lambda s: s.update({"enriched.txt": b"\xff\xfe bad"}), "enriched.txt: not UTF-8"),
        (lambda s: s.update({"vllm_img.npy": b"garbage"}), "vllm_img.npy: not a readable .npy array"),
        (lambda s: s.update({"vllm_img.npy": npy(np.zeros((6, 8), np.float32))}), "vllm_img.npy: dtype is not float16"),
        (lambda s: s.update({"vllm_txt.npy": npy(np.zeros(8, np.float16))}),
         "vllm_txt.npy: expected a non-empty 2-D array"),
        (lambda s: s.update({"vllm_txt.npy": npy(np.zeros((0, 8), np.float16))}),
         "vllm_txt.npy: expected a non-empty 2-D array"),
        (lambda s: s.update({"vllm_txt.npy": npy(np.zeros((3, 9), np.float16))}),
         "vllm_img.npy and vllm_txt.npy have different widths D"),
        (lambda s: s.update({"input_latent.npy": npy(np.zeros((4, 3, 2), np.float16))}),
         "target_latent.npy is not 2C x h x w for a C x h x w input_latent.npy"),
        (lambda s: s.update({"target_latent.npy": npy(np.zeros((8, 2, 2), np.int8))}),
         "target_latent.npy: dtype is not float16 or float32"),
    ],
)
def test_validator_names_each_problem(mutate, expected):
    problems = _problems(mutate)
    assert any(p.startswith(expected) for p in problems), problems


def test_validator_require_and_full_decode():
    s = sample()
    assert S.validate_sample(s, require=["curated.txt", "vllm_txt.npy"]) == ["curated.txt is missing",
                                                                             "vllm_txt.npy is missing"]
    # markers intact but the middle is garbage: only a full decode notices
    data = bytearray(s["input.jpg"])
    data[20:-10] = b"\x00" * (len(data) - 30)
    s["input.jpg"] = bytes(data)
    assert S.validate_sample(s) == []
    assert S.validate_sample(s, decode_images=True) == ["input.jpg: JPEG does not decode"]


def test_sample_meta_round_trip():
    d = meta()
    m = S.SampleMeta.from_dict(d)
    assert m.key == "epic-kitchens-P01_01-P01_01_7"
    assert m.boxes[1].name == "onion" and m.boxes[0].name is None
    assert m.extra == {"narration_id": "P01_01_7"}
    assert json.loads(m.to_json()) == d
    assert S.SampleMeta.from_json(m.to_json()) == m
    with pytest.raises(BadInput, match="meta.json: t_target is missing"):
        S.SampleMeta.from_dict({k: v for k, v in d.items() if k != "t_target"})
    with pytest.raises(BadInput, match="not valid JSON"):
        S.decode_meta(b"{")


def test_npy_float16_round_trip():
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float16)
    b = S.decode_npy(S.encode_npy(a))
    assert b.dtype == np.float16 and np.array_equal(a, b)


def _pair_meta(**over) -> dict:
    m = meta(dataset="pairs", video_id="mine", action_id="0001", source="images",
             input_image="a/in.jpg", target_image="a/out.jpg")
    for k in ("t_input", "t_target", "fps"):
        del m[k]
    m.update(over)
    return m


def test_a_pair_made_from_images_has_no_video_times_but_names_its_images():
    assert S.meta_problems(_pair_meta()) == []
    assert S.meta_problems(_pair_meta(target_image="")) == [
        "meta.json: target_image is missing or empty (a pair made from images names them)"]
    video = _pair_meta()
    del video["source"]                       # without the marker it is a video pair: times required
    assert "meta.json: t_input is missing" in S.meta_problems(video)
    m = S.SampleMeta.from_dict(_pair_meta())
    assert m.t_input is None and m.fps is None and m.extra["input_image"] == "a/in.jpg"
    assert m.to_dict() == _pair_meta()
