"""LegoConditioner and LegoPipeline on tiny components: InstructPix2Pix equivalence, the context
the UNet really receives, save/load, and building from SD-1.5 / InstructPix2Pix folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from lego_core.diffusion.build import build_from_pretrained, load_pipeline, widen_conv_in
from lego_core.diffusion.conditioner import LegoConditioner, feedforward_width
from lego_core.diffusion.pipeline import LegoPipeline
from lego_core.kit import make_tiny_sd

VLLM_DIM, M = 48, 6
STEPS = 3


@pytest.fixture(scope="module")
def ip2p_folder(tiny_ip2p):
    return tiny_ip2p


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("sd"), sample_size=8)


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def components(folder):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None,
                                                                 requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    parts = {k: getattr(ref, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    return ref, parts


def lego(parts, conditioning=None, seed=0):
    conditioner = None
    if conditioning:
        torch.manual_seed(seed)
        conditioner = LegoConditioner(vllm_dim=VLLM_DIM, cross_attention_dim=parts["unet"].config.cross_attention_dim,
                                      conditioning=conditioning, dim_feedforward=64).eval()
    pipe = LegoPipeline(**parts, conditioner=conditioner)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def vllm_inputs(seed=1, n_txt=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, M, VLLM_DIM, generator=g), [torch.randn(n_txt, VLLM_DIM, generator=g)]


def run(pipe, frame, seed=0, **kw):
    return pipe("cut onion", frame, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
                output_type="np", **kw).images


@pytest.mark.parametrize("conditioning", [None, "label", "description"])
def test_same_images_as_diffusers_instruct_pix2pix(ip2p_folder, frame, conditioning):
    ref, parts = components(ip2p_folder)
    want = ref("cut onion", image=frame, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    got = run(lego(parts, conditioning), frame)
    assert got.shape == want.shape == (1, 64, 64, 3)
    assert np.abs(got - want).max() <= 1e-5


def record_contexts(pipe):
    seen = []
    forward = pipe.unet.forward

    def spy(sample, t, encoder_hidden_states=None, **kw):
        seen.append(encoder_hidden_states.detach().clone())
        return forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    pipe.unet.forward = spy
    return seen


def test_joint_context_rows_and_null_branches_are_exactly_zero(ip2p_folder, frame):
    _, parts = components(ip2p_folder)
    pipe = lego(parts, "description+joint")
    seen = record_contexts(pipe)
    h_i, h_t = vllm_inputs()
    run(pipe, frame, vllm_image_embeds=h_i, vllm_text_embeds=h_t)
    ctx = seen[0]
    assert ctx.shape == (3, 77 + M + 77, parts["unet"].config.cross_attention_dim)
    cond, null_text, null_both = ctx
    assert cond[77:].abs().sum() > 0                       # the VLLM rows carry something
    assert torch.count_nonzero(null_text[77:]) == 0        # zeroed after σ and π∘μ: no bias left
    assert torch.count_nonzero(null_both[77:]) == 0
    assert torch.equal(null_text[:77], null_both[:77]) and not torch.equal(cond[:77], null_text[:77])


def test_vllm_inputs_change_the_image_and_seeds_reproduce(ip2p_folder, frame):
    _, parts = components(ip2p_folder)
    pipe = lego(parts, "description+joint")
    a = run(pipe, frame, vllm_image_embeds=vllm_inputs(1)[0], vllm_text_embeds=vllm_inputs(1)[1])
    again = run(pipe, frame, vllm_image_embeds=vllm_inputs(1)[0], vllm_text_embeds=vllm_inputs(1)[1])
    other = run(pipe, frame, vllm_image_embeds=vllm_inputs(2)[0], vllm_text_embeds=vllm_inputs(2)[1])
    assert np.array_equal(a, again)
    assert np.abs(a - other).max() > 1e-4


def test_text_guidance_applies_whatever_the_image_guidance(ip2p_folder, frame):
    """The 3-way formula for any scales (diffusers' InstructPix2Pix drops all guidance when s_I < 1)."""
    _, parts = components(ip2p_folder)
    pipe = lego(parts, "description")
    low = run(pipe, frame, guidance_scale=7.5, image_guidance_scale=0.8)
    high = run(pipe, frame, guidance_scale=20.0, image_guidance_scale=0.8)
    assert np.abs(low - high).max() > 1e-3
    plain = run(pipe, frame, guidance_scale=1.0, image_guidance_scale=1.0)   # = ε(X, C), one branch
    seen = record_contexts(pipe)
    assert np.abs(run(pipe, frame, guidance_scale=1.0, image_guidance_scale=1.0) - plain).max() == 0
    assert seen[0].shape[0] == 1


def test_bf16_unet_and_conditioner_with_fp32_encoders(ip2p_folder, frame):
    """As validation samples during bf16 training: the UNet and conditioner in bf16, the frozen VAE
    and text encoder in fp32."""
    _, parts = components(ip2p_folder)
    pipe = lego(parts, "description+joint")
    pipe.unet.to(torch.bfloat16)
    pipe.conditioner.to(torch.bfloat16)
    h_i, h_t = vllm_inputs()
    out = run(pipe, frame, vllm_image_embeds=h_i, vllm_text_embeds=h_t)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_a_model_that_needs_embeddings_refuses_to_run_without(ip2p_folder, frame):
    _, parts = components(ip2p_folder)
    with pytest.raises(ValueError, match="needs"):
        run(lego(parts, "description+image"), frame)
    with pytest.raises(ValueError, match="3 prompts but 2 images"):
        lego(parts)(["a", "b", "c"], [frame, frame], num_inference_steps=1)


def test_save_load_round_trip(ip2p_folder, frame, tmp_path):
    _, parts = components(ip2p_folder)
    pipe = lego(parts, "description+joint")
    h_i, h_t = vllm_inputs()
    before = run(pipe, frame, vllm_image_embeds=h_i, vllm_text_embeds=h_t)
    pipe.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "conditioner" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_pipeline(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.conditioner, LegoConditioner) and loaded.conditioning == "description+joint"
    after = run(loaded, frame, vllm_image_embeds=h_i, vllm_text_embeds=h_t)
    assert np.abs(before - after).max() <= 1e-6


def test_build_from_sd15_widens_conv_in_with_zero_channels(sd_folder):
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet").conv_in
    pipe = build_from_pretrained(sd_folder, conditioning="description+joint", vllm=VLLM_DIM)
    conv = pipe.unet.conv_in
    assert conv.in_channels == 8 and pipe.unet.config.in_channels == 8
    assert torch.equal(conv.weight[:, :4], original.weight) and torch.equal(conv.bias, original.bias)
    assert torch.count_nonzero(conv.weight[:, 4:]) == 0
    assert pipe.conditioner.projection_img.in_features == VLLM_DIM
    assert pipe.conditioner.projection_img.out_features == pipe.unet.config.cross_attention_dim
    d = pipe.unet.config.cross_attention_dim
    assert pipe.conditioner.self_attn_mix.layers[0].linear1.out_features == feedforward_width(d) == 4 * d
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


def test_loaded_vaes_encode_channels_last_to_the_same_latents(ip2p_folder, tmp_path):
    """Training, latent caching and generation load the VAE with its encoder channels-last (faster
    on CPU); the latents must be the plain encoder's, and the weights must save unchanged."""
    from diffusers import AutoencoderKL

    plain = AutoencoderKL.from_pretrained(ip2p_folder, subfolder="vae")
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = plain.encode(pixels).latent_dist.mean
    for pipe in (build_from_pretrained(ip2p_folder, conditioning="label", vllm=VLLM_DIM), load_pipeline(ip2p_folder)):
        weight = pipe.vae.encoder.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        assert pipe.vae.decoder.conv_in.weight.is_contiguous()             # the decoder does not gain
        with torch.no_grad():
            assert torch.allclose(pipe.vae.encode(pixels).latent_dist.mean, want, atol=1e-5)
    pipe.vae.save_pretrained(tmp_path / "vae")
    saved = AutoencoderKL.from_pretrained(tmp_path / "vae").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in plain.state_dict().items())


def test_the_mixers_feed_forward_is_the_authors_at_sd15_width_and_scaled_below():
    assert feedforward_width(768) == 2048 and feedforward_width(1024) == 2048
    assert feedforward_width(32) == 128


def test_build_from_instruct_pix2pix_keeps_its_8_channels(ip2p_folder):
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.from_pretrained(ip2p_folder, subfolder="unet").conv_in
    pipe = build_from_pretrained(ip2p_folder, conditioning="label", vllm=VLLM_DIM)
    assert torch.equal(pipe.unet.conv_in.weight, original.weight)
    with pytest.raises(ValueError):
        widen_conv_in(pipe.unet, 4)


def test_conditioner_init_padding_and_variants():
    torch.manual_seed(0)
    c = LegoConditioner(vllm_dim=16, cross_attention_dim=32, conditioning="description+text", dim_feedforward=64)
    assert torch.count_nonzero(c.projection_txt.bias) == 0
    bound = (6 / (16 + 32)) ** 0.5                          # Xavier uniform
    assert c.projection_txt.weight.abs().max() <= bound and c.projection_txt.weight.std() > bound / 3
    # π too (the paper: σ, μ and π Xavier-initialised): every matrix within its own Xavier bound
    # and filling it, biases zero, and the two layers drawn independently (not one layer's copy).
    for name, p in c.self_attn_mix.named_parameters():
        if p.dim() > 1:
            xavier = (6 / sum(p.shape)) ** 0.5
            assert p.abs().max() <= xavier and p.abs().max() > 0.9 * xavier, name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    first, second = c.self_attn_mix.layers
    assert not torch.equal(first.linear1.weight, second.linear1.weight)
    padded = c.pad_text_embeds([torch.ones(5, 16), torch.ones(100, 16)])
    assert padded.shape == (2, 77, 16)
    assert padded[0, 5:].abs().sum() == 0 and padded[1].abs().min() == 1
    psi = torch.randn(2, 77, 32)
    ctx = c.eval()(psi, None, [torch.ones(5, 16), torch.ones(100, 16)])
    assert ctx.shape == (2, 154, 32)
    layer = c.self_attn_mix.layers[0]
    assert layer.norm_first and layer.self_attn.batch_first and layer.self_attn.num_heads == 8
    with pytest.raises(ValueError):
        LegoConditioner(conditioning="everything")


def test_flips_are_fixed_by_seed_epoch_and_key():
    """X and Y mirrored together, for about half the samples, the same on every rerun or resume
    (no global RNG, no DataLoader-worker seeds) and different across epochs and seeds."""
    from lego_core.diffusion.data import flip_batch, flip_coin

    keys = [f"epic-P01_{i:02d}-a" for i in range(200)]
    picks = [flip_coin(0, 0, k) for k in keys]
    assert 70 < sum(picks) < 130
    assert picks == [flip_coin(0, 0, k) for k in keys]
    assert picks != [flip_coin(0, 1, k) for k in keys] and picks != [flip_coin(1, 0, k) for k in keys]
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    batch = flip_batch({"key": keys[:2], "input": x.clone(), "target": x.clone() + 1}, 0, 0)
    for i in range(2):
        want = torch.flip(x[i], dims=[-1]) if picks[i] else x[i]
        assert torch.equal(batch["input"][i], want) and torch.equal(batch["target"][i], want + 1)
