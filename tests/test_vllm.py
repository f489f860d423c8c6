"""The VLLM module: loading, question templates, prompts, and describe_and_embed through a tiny
LLaVA saved to a temp folder and loaded back with `load_vllm` (the production path)."""

from __future__ import annotations

import json
import random

import pytest

from lego_core.errors import BadInput

LABELS = ["cut onion", "#C C opens the fridge door", "wash plate"]
MAX_NEW = 6


@pytest.fixture(scope="module")
def llava_dir(tiny_llava):
    return tiny_llava


@pytest.fixture(scope="module")
def vllm(llava_dir):
    from lego_core.vllm.load import load_vllm

    return load_vllm(llava_dir, device="cpu")


def _images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(64, 48), (40, 40), (30, 52)]
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in sizes]


@pytest.fixture(scope="module")
def greedy_batched(vllm):
    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm
    return describe_and_embed(model, processor, _images(), LABELS, greedy=True, max_new_tokens=MAX_NEW, batch_size=3)


# ------------------------------------------------------------------------------------ templates


def test_ten_templates_each_takes_the_action_once():
    from lego_core.vllm.templates import INFERENCE_QUESTION, QUESTION_TEMPLATES

    assert len(QUESTION_TEMPLATES) == 10 == len(set(QUESTION_TEMPLATES))
    for t in QUESTION_TEMPLATES:
        assert t.count("{action}") == 1 and t.format(action="cut onion").count("cut onion") == 1
    # the authors' released inference question, word for word (vllm/scripts/inference.sh)
    assert INFERENCE_QUESTION.replace("{action}", "{}") == \
        "How does the person properly {} that is displayed in the video frame?"


def test_inference_question_is_fixed_and_tuning_questions_are_seeded():
    from lego_core.vllm.templates import QUESTION_TEMPLATES, inference_question, tuning_question

    assert inference_question("cut onion") == inference_question("cut onion")
    assert inference_question("cut onion") == ("How does the person properly cut onion that is displayed in the "
                                               "video frame?")
    assert inference_question("cut onion", "What would {} look like?") == "What would cut onion look like?"
    assert inference_question("cut onion", "Show {action}.") == "Show cut onion."
    for bad in ("No place for the action.", "{} and {}", "{action} {other}", "  "):
        with pytest.raises(BadInput, match="--question"):
            inference_question("cut onion", bad)
    a = [tuning_question("cut onion", r) for r in [random.Random(7)] for _ in range(50)]
    rng = random.Random(7)
    b = [tuning_question("cut onion", rng) for _ in range(50)]
    assert a == b
    assert tuning_question("cut onion", 3) == tuning_question("cut onion", 3)
    drawn = {tuning_question("cut onion", s) for s in range(200)}
    assert drawn == {t.format(action="cut onion") for t in QUESTION_TEMPLATES}


def test_action_text_shares_the_ego4d_cleaning():
    from lego_core.data.labels import clean_narration
    from lego_core.vllm.templates import action_text

    narration = "#C C cuts the onion."
    assert action_text(narration) == clean_narration(narration) == "cut onion"
    assert action_text("  Open   fridge. ") == "open fridge"
    assert action_text("focus camera") == "focus camera"  # not an Ego4D narration: not lemmatised
    with pytest.raises(BadInput):
        action_text("  ")


# -------------------------------------------------------------------------------------- prompts


def test_prompt_uses_the_chat_template(vllm):
    from lego_core.vllm.prompting import build_prompt

    _, processor = vllm
    assert build_prompt(processor, "How?") == "USER: <image>\nHow? ASSISTANT:"


def test_prompt_fallback_without_a_chat_template(vllm):
    import copy

    from lego_core.vllm.prompting import FALLBACK_TEMPLATE, build_prompt, has_chat_template

    processor = copy.deepcopy(vllm[1])
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    assert not has_chat_template(processor)
    assert build_prompt(processor, "How?") == FALLBACK_TEMPLATE.format(image="<image>", question="How?")
    assert build_prompt(processor, "How?") == "USER: <image>\nHow? ASSISTANT:"


def test_prepare_image_pads_to_a_square_with_the_mean_colour(vllm):
    from PIL import Image

    from lego_core.vllm.prompting import prepare_image

    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    assert prepare_image(wide, vllm[1], "crop").size == (60, 20)
    square = prepare_image(wide, vllm[1], "pad")
    assert square.size == (60, 60)
    mean = tuple(round(255 * c) for c in vllm[1].image_processor.image_mean)
    assert square.getpixel((0, 0)) == mean and square.getpixel((30, 30)) == (255, 0, 0)
    assert prepare_image(Image.new("L", (8, 8)), vllm[1], "pad").mode == "RGB"


# -------------------------------------------------------------------------------------- loading


def test_load_errors_are_bad_input(tmp_path, llava_dir):
    from lego_core.vllm.load import load_config, load_vllm

    with pytest.raises(BadInput, match="no config.json"):
        load_vllm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BadInput, match="model_type 'llama'"):
        load_vllm(tmp_path)
    with pytest.raises(BadInput, match="not found"):
        load_vllm(tmp_path / "missing" / "llava")
    with pytest.raises(BadInput, match="dtype"):
        load_vllm(llava_dir, dtype="int8")
    assert load_config(llava_dir).model_type == "llava"


def test_load_dtype_and_embedding_shape(llava_dir, vllm):
    import torch

    from lego_core.vllm.load import embedding_shape, load_vllm

    model, _ = load_vllm(llava_dir, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert vllm[0].dtype == torch.float32  # auto on the CPU
    assert embedding_shape(vllm[0]) == (16, 64)  # (32 / 8)^2 patches, CLS dropped; text width 64


# ---------------------------------------------------------------------------- describe_and_embed


def test_outputs_shapes_and_dtypes(greedy_batched):
    import numpy as np

    assert len(greedy_batched) == 3
    for o, label in zip(greedy_batched, LABELS):
        assert o.image_embeds.shape == (16, 64) and o.image_embeds.dtype == np.float16
        assert o.text_embeds.dtype == np.float16 and o.text_embeds.shape[1] == 64
        assert 1 <= o.text_embeds.shape[0] == len(o.token_ids) <= MAX_NEW
        assert isinstance(o.description, str)
        assert o.h_i is o.image_embeds and o.h_t is o.text_embeds
    assert "open fridge door" in greedy_batched[1].question  # Ego4D narration cleaned


def test_batched_equals_one_at_a_time_under_greedy(vllm, greedy_batched):
    import numpy as np

    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm
    single = [describe_and_embed(model, processor, [im], [lab], greedy=True, max_new_tokens=MAX_NEW)[0]
              for im, lab in zip(_images(), LABELS)]
    for b, s in zip(greedy_batched, single):
        assert b.description == s.description
        assert b.token_ids.tolist() == s.token_ids.tolist()
        assert b.image_embeds.shape == s.image_embeds.shape and b.text_embeds.shape == s.text_embeds.shape
        # float16 storage: ~3 significant digits; the rest is float32 rounding of padded vs unpadded
        np.testing.assert_allclose(b.image_embeds.astype(np.float32), s.image_embeds, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(b.text_embeds.astype(np.float32), s.text_embeds, rtol=2e-3, atol=2e-3)


def test_lm_head_of_text_embeds_gives_the_generated_tokens(vllm, greedy_batched):
    import torch

    model, _ = vllm
    for o in greedy_batched:
        with torch.no_grad():
            logits = model.lm_head(torch.from_numpy(o.text_embeds.astype("float32")))
        ids = torch.as_tensor(o.token_ids)
        picked = logits.gather(1, ids[:, None])[:, 0]
        # argmax, up to float16 rounding of H_t: a near-tie may flip, but then the generated token's
        # logit is within rounding of the max
        differ = logits.argmax(1) != ids
        assert differ.sum() <= 1
        assert torch.allclose(picked[differ], logits.max(1).values[differ], atol=1e-2)


def test_image_embeds_equal_the_projector_output(vllm, greedy_batched):
    import numpy as np
    import torch

    from lego_core.vllm.prompting import prepare_image

    model, processor = vllm
    pixels = processor.image_processor([prepare_image(im, processor) for im in _images()],
                                       return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        direct = model.model.multi_modal_projector(hidden[-2][:, 1:])  # layer -2, CLS dropped
    for o, d in zip(greedy_batched, direct):
        np.testing.assert_allclose(o.image_embeds.astype(np.float32), d.numpy(), rtol=1e-3, atol=1e-3)


def test_stops_at_the_end_token_per_sample(vllm, greedy_batched):
    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm
    ids0 = greedy_batched[0].token_ids.tolist()
    stop_token = ids0[2]  # pretend the third token of sample 0 is an end token
    gen = model.generation_config
    before = gen.eos_token_id
    gen.eos_token_id = [before, stop_token]
    try:
        out = describe_and_embed(model, processor, _images(), LABELS, greedy=True, max_new_tokens=MAX_NEW)
    finally:
        gen.eos_token_id = before
    for o, full in zip(out, greedy_batched):
        ids = full.token_ids.tolist()
        n = ids.index(stop_token) + 1 if stop_token in ids else len(ids)
        assert o.token_ids.tolist() == ids[:n] and o.text_embeds.shape[0] == n
        assert o.stopped == (stop_token in ids)
        if o.stopped:
            expect = processor.tokenizer.decode(ids[: n - 1], skip_special_tokens=True).strip()
            assert o.description == expect
    assert out[0].stopped and len(out[0].token_ids) == 3


def test_max_text_tokens_truncates_h_t_only(vllm, greedy_batched):
    import numpy as np

    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm
    out = describe_and_embed(model, processor, _images()[:1], LABELS[:1], greedy=True, max_new_tokens=MAX_NEW,
                             max_text_tokens=2)[0]
    assert out.text_embeds.shape == (2, 64)
    assert out.description == greedy_batched[0].description and len(out.token_ids) == len(greedy_batched[0].token_ids)
    np.testing.assert_array_equal(out.text_embeds, greedy_batched[0].text_embeds[:2])


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(vllm):
    import torch

    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm

    def run(seed):
        out = describe_and_embed(model, processor, _images(), LABELS, max_new_tokens=MAX_NEW, seed=seed,
                                 temperature=1.0)
        return [o.token_ids.tolist() for o in out]

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = run(5)
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG state restored
    assert run(5) == a
    assert run(6) != a


def test_bad_arguments(vllm):
    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm
    with pytest.raises(BadInput, match="labels"):
        describe_and_embed(model, processor, _images(), LABELS[:2])
    with pytest.raises(BadInput, match="temperature"):
        describe_and_embed(model, processor, _images()[:1], LABELS[:1], temperature=0)
    with pytest.raises(BadInput, match="max_new_tokens"):
        describe_and_embed(model, processor, _images()[:1], LABELS[:1], max_new_tokens=0)
    assert describe_and_embed(model, processor, [], []) == []


def test_custom_questions(vllm):
    from lego_core.vllm.describe import describe_and_embed

    model, processor = vllm
    out = describe_and_embed(model, processor, _images()[:1], [], questions=["What is here?"], greedy=True,
                             max_new_tokens=2)
    assert out[0].question == "What is here?"
    out = describe_and_embed(model, processor, _images()[:1], ["cut onion"], question="What is {}?", greedy=True,
                             max_new_tokens=2)
    assert out[0].question == "What is cut onion?"
