"""Each metric against an independent computation, the offline weight loading and its error
messages, image decoding and key matching. Tiny random models come from `lego_core.kit.metric_models`
and are loaded back through `from_pretrained`, as real ones are."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from lego_core.errors import BadInput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = os.path.join(REPO, "shards")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny CLIP, BLIP, FID feature model and a SqueezeNet backbone file, built once."""
    import torch
    import torchvision

    from lego_core.kit.metric_models import make_tiny_blip, make_tiny_clip, make_tiny_fid_features

    d = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    squeeze = d / "squeezenet1_1-b8a52dc0.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), squeeze)
    return {
        "clip": str(make_tiny_clip(d / "clip")),
        "blip": str(make_tiny_blip(d / "blip")),
        "fid": str(make_tiny_fid_features(d / "fid")),
        "squeeze": str(squeeze),
        "dir": d,
    }


def _images(n, size=(40, 32), seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _batch(gen, ref, descriptions=None):
    from lego_core.metrics.common import Batch

    keys = [f"k{i}" for i in range(len(gen))]
    return Batch(keys, gen, ref, descriptions=descriptions or [None] * len(gen), labels=[None] * len(gen))


# --- PSNR ------------------------------------------------------------------------------------


def test_psnr_per_image_then_mean_matches_numpy():
    from lego_core.metrics.pixel import PSNR

    ref = _images(3, seed=1) + _images(2, size=(24, 24), seed=2)
    gen = _images(3, seed=3) + _images(2, size=(24, 24), seed=4)
    got = PSNR().update(_batch(gen, ref))["psnr"]
    want = []
    for g, r in zip(gen, ref):
        mse = np.mean((np.asarray(g, np.float64) / 255 - np.asarray(r, np.float64) / 255) ** 2)
        want.append(10 * np.log10(1.0 / mse))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert PSNR().update(_batch(ref[:1], ref[:1]))["psnr"] == [pytest.approx(100.0)]  # identical: floored MSE


# --- PSNR over the changed / unchanged region -----------------------------------------------------


def _scene():
    """A 20×20 black input frame; the ground truth has a 10×10 square (rows/cols 5–14) turned grey 200."""
    x = np.zeros((20, 20, 3), np.uint8)
    y = x.copy()
    y[5:15, 5:15] = 200
    return x, y


def test_changed_psnr_exact_values_on_a_square():
    from lego_core.metrics.pixel import changed_psnr, changed_region

    x, y = _scene()
    mask = changed_region(x, y)
    assert mask.sum() == 100 and mask[5:15, 5:15].all()
    # Right in the changed square, wrong (+51 = 0.2 in every channel) everywhere else.
    right_changed = np.full_like(y, 51)
    right_changed[5:15, 5:15] = 200
    v = changed_psnr(right_changed, x, y)
    assert v.changed == pytest.approx(100.0) and v.changed_fraction == 0.25      # identical: floored MSE
    assert v.unchanged == pytest.approx(10 * np.log10(1 / 0.2 ** 2), rel=1e-12)
    # Right outside, wrong inside in one channel only (−51): the MSE is over the 3 channels.
    right_unchanged = y.copy()
    right_unchanged[5:15, 5:15, 0] = 149
    v = changed_psnr(right_unchanged, x, y)
    assert v.changed == pytest.approx(10 * np.log10(3 / 0.2 ** 2), rel=1e-12) and v.unchanged == pytest.approx(100.0)
    # The input frame itself: the do-nothing baseline.
    v = changed_psnr(x, x, y)
    assert v.changed == pytest.approx(10 * np.log10(1 / (200 / 255) ** 2), rel=1e-12)
    assert v.unchanged == pytest.approx(100.0)
    # The same from [0, 1] float arrays and PIL images.
    w = changed_psnr(Image.fromarray(x), x.astype(np.float64) / 255, Image.fromarray(y))
    assert (w.changed, w.unchanged) == (pytest.approx(v.changed, rel=1e-12), pytest.approx(100.0))


def test_changed_pixel_is_mean_over_rgb_above_0_1():
    from lego_core.metrics.pixel import changed_region

    x = np.zeros((2, 2, 3), np.uint8)
    y = x.copy()
    y[0, 0] = (76, 0, 0)      # mean 0.0994: unchanged
    y[0, 1] = (77, 77, 77)    # mean 0.302: changed
    y[1, 0] = (0, 0, 77)      # mean 0.1007: changed
    y[1, 1] = (25, 25, 25)    # mean 0.098: unchanged
    assert changed_region(x, y).tolist() == [[False, True], [True, False]]


def test_small_changed_region_is_excluded_and_all_changed_has_no_unchanged():
    from lego_core.metrics.pixel import changed_psnr

    x = np.zeros((20, 20, 3), np.uint8)
    y = x.copy()
    y[0, 0] = 255                                   # 1 of 400 pixels = 0.25 % < 0.5 %: left out
    v = changed_psnr(y, x, y)
    assert v.changed is None and v.unchanged == pytest.approx(100.0) and v.changed_fraction == 0.0025
    y[0, 1] = 255                                   # 2 of 400 = 0.5 %: kept
    v = changed_psnr(x, x, y)
    assert v.changed == pytest.approx(0.0) and v.unchanged == pytest.approx(100.0)
    v = changed_psnr(x, x, np.full_like(x, 255))    # everything changed: no unchanged region
    assert v.changed == pytest.approx(0.0) and v.unchanged is None


def test_changed_psnr_resizes_prediction_and_input_bicubic_to_the_ground_truth():
    from lego_core.metrics.pixel import changed_psnr

    x, y = _scene()
    rng = np.random.RandomState(0)
    small = rng.randint(0, 256, (10, 10, 3), dtype=np.uint8)       # prediction at half size
    x_big = np.asarray(Image.fromarray(x).resize((40, 40), Image.NEAREST))  # input frame at twice the size
    up = np.asarray(Image.fromarray(small).resize((20, 20), Image.BICUBIC), np.float64) / 255
    x_back = np.asarray(Image.fromarray(x_big).resize((20, 20), Image.BICUBIC), np.float64) / 255
    mask = np.abs(y / 255 - x_back).mean(-1) > 0.1
    want_changed = 10 * np.log10(1 / np.mean((up - y / 255)[mask] ** 2))
    want_unchanged = 10 * np.log10(1 / np.mean((up - y / 255)[~mask] ** 2))
    v = changed_psnr(small, x_big, y)
    assert (v.changed, v.unchanged) == (pytest.approx(want_changed, rel=1e-12),
                                        pytest.approx(want_unchanged, rel=1e-12))
    assert changed_psnr(Image.fromarray(small), Image.fromarray(x_big), Image.fromarray(y)).changed == v.changed
    # A [0, 1] float prediction is resized in float, channel by channel.
    f = changed_psnr(small / 255.0, x, y)
    assert f.changed == pytest.approx(want_changed, abs=0.05)


def test_changed_psnr_metric_counts_exclusions_and_wins():
    from lego_core.metrics.common import Batch
    from lego_core.metrics.pixel import ChangedPSNR

    x, y = _scene()
    tiny = x.copy()
    tiny[0, 0] = 255                                      # a changed region of 0.25 %
    better = y.copy()
    better[5:15, 5:15, 0] = 149
    P = Image.fromarray
    refs, gens, inputs = [P(y), P(y), P(tiny), P(y)], [P(better), P(x), P(tiny), P(y)], [P(x), P(x), P(x), None]
    m = ChangedPSNR()
    m.start(["a", "b", "c", "d"])
    out = m.update(Batch(["a", "b", "c", "d"], gens, refs, inputs=inputs))
    assert out["psnr_changed"][0] == pytest.approx(10 * np.log10(3 / 0.04))
    assert out["psnr_unchanged"][0] == pytest.approx(100)
    assert out["psnr_changed"][1] == out["input_psnr_changed"][1] == pytest.approx(10 * np.log10(1 / (200 / 255) ** 2))
    assert out["psnr_changed"][2] is None and out["psnr_unchanged"][2] == pytest.approx(100)   # excluded
    assert all(out[c][3] is None for c in m.columns)                                          # no input frame
    fin = m.finish()
    assert fin["psnr_changed"] == {"excluded": 1, "no_input": 1} and fin["psnr_unchanged"]["excluded"] == 0
    assert fin["psnr_changed_beats_input"] == {"value": 0.5, "n": 2}   # a wins; b only ties the input


# --- LPIPS -----------------------------------------------------------------------------------


def _lpips_direct(gen, ref, torch_home, normalize_to_pm1=True):
    """lpips called directly, loading its backbone through torchvision from TORCH_HOME's cache."""
    import lpips
    import torch

    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        model = lpips.LPIPS(net="squeeze", verbose=False).eval()
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME")
        else:
            os.environ["TORCH_HOME"] = old
    g = torch.from_numpy(np.stack([np.asarray(i, np.float32) for i in gen])).permute(0, 3, 1, 2) / 255
    r = torch.from_numpy(np.stack([np.asarray(i, np.float32) for i in ref])).permute(0, 3, 1, 2) / 255
    if normalize_to_pm1:
        g, r = g * 2 - 1, r * 2 - 1
    with torch.no_grad():
        return model(g, r).flatten().tolist()


def test_lpips_equals_lpips_called_directly(models, tmp_path, monkeypatch):
    from lego_core.metrics.lpips_metric import LPIPS

    home = tmp_path / "torch"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    os.link(models["squeeze"], home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    gen, ref = _images(3, (48, 40), seed=5), _images(3, (48, 40), seed=6)
    want = _lpips_direct(gen, ref, home)
    monkeypatch.setenv("TORCH_HOME", str(home))
    from_cache = LPIPS("squeeze").update(_batch(gen, ref))["lpips"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    from_file = LPIPS("squeeze", weights=models["squeeze"]).update(_batch(gen, ref))["lpips"]
    np.testing.assert_allclose(from_cache, want, rtol=1e-5)
    np.testing.assert_allclose(from_file, want, rtol=1e-5)
    # --lpips-authors-range: [0, 1] fed where [-1, 1] is expected, as the authors did.
    authors = LPIPS("squeeze", weights=models["squeeze"], authors_range=True).update(_batch(gen, ref))["lpips"]
    np.testing.assert_allclose(authors, _lpips_direct(gen, ref, home, normalize_to_pm1=False), rtol=1e-5)
    assert not np.allclose(authors, want)


def test_lpips_cpu_chunks_equal_one_pass(models, tmp_path):
    """At 256×200 a CPU chunk holds 2 pairs, so 3 pairs run as 2 + 1; same values as lpips directly."""
    from lego_core.metrics.lpips_metric import LPIPS, pairs_per_chunk

    assert pairs_per_chunk("cpu", 200, 256, 3) == 2 and pairs_per_chunk("cuda:0", 200, 256, 3) == 3
    home = tmp_path / "torch"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    os.link(models["squeeze"], home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    gen, ref = _images(3, (256, 200), seed=7), _images(3, (256, 200), seed=8)
    got = LPIPS("squeeze", weights=models["squeeze"]).update(_batch(gen, ref))["lpips"]
    np.testing.assert_allclose(got, _lpips_direct(gen, ref, home), rtol=1e-5)


def test_lpips_missing_backbone_names_file_and_option(tmp_path, monkeypatch):
    from lego_core.metrics.lpips_metric import LPIPS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BadInput) as e:
        LPIPS("squeeze")
    msg = str(e.value)
    assert "squeezenet1_1-b8a52dc0.pth" in msg and "--lpips-weights" in msg and str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(BadInput, match="does not exist"):
        LPIPS("alex", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot read"):
        LPIPS("squeeze", weights=str(bad))


# --- FID -------------------------------------------------------------------------------------


def _frechet_numpy(f1, f2):
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_matches_numpy_scipy_frechet_on_same_features(models):
    import torch

    from lego_core.metrics.common import Batch
    from lego_core.metrics.fid import FID, hf_feature_extractor

    ref, gen = _images(40, (32, 32), seed=7), _images(40, (32, 32), seed=8)
    gen = [Image.fromarray((np.asarray(g) * 0.5 + 60).astype(np.uint8)) for g in gen]  # a shifted distribution
    fid = FID(model=models["fid"])
    keys = [f"k{i}" for i in range(40)]
    fid.start(keys)
    for lo in range(0, 40, 16):  # several batches accumulate
        fid.update(Batch(keys[lo:lo + 16], gen[lo:lo + 16], ref[lo:lo + 16]))
    got = fid.finish()["fid"]
    feat = hf_feature_extractor(models["fid"])
    to_t = lambda ims: torch.from_numpy(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        f_ref, f_gen = feat(to_t(ref)).double().numpy(), feat(to_t(gen)).double().numpy()
    assert f_ref.shape == (40, 32)
    want = _frechet_numpy(f_ref, f_gen)
    assert got["n"] == 40 and got["value"] == pytest.approx(want, rel=1e-3, abs=1e-4)
    # A second generated set with the same keys reuses the reference statistics; same answer.
    fid.start(keys)
    fid.update(Batch(keys, gen, ref))
    assert fid.finish()["fid"]["value"] == pytest.approx(got["value"], rel=1e-6)
    fid.start(keys[:1])
    fid.update(Batch(keys[:1], gen[:1], ref[:1]))
    assert fid.finish()["fid"]["value"] is None  # one image: no covariance


def test_fid_inception_weights_file_and_missing_message(tmp_path, monkeypatch):
    """The default InceptionV3 path, with random weights in the official layout (keys and shapes)."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    from lego_core.kit.metric_models import make_random_inception_weights
    from lego_core.metrics.fid import FID, INCEPTION_FILE

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(BadInput) as e:
        FID()
    assert INCEPTION_FILE in str(e.value) and "--fid-weights" in str(e.value)
    path = make_random_inception_weights(tmp_path / "th" / "hub" / "checkpoints" / INCEPTION_FILE)
    ref, gen = _images(3, (64, 64), seed=9), _images(3, (64, 64), seed=10)
    fid = FID()  # found in the torch cache
    fid.start(["a", "b", "c"])
    fid.update(_batch(gen, ref))
    got = fid.finish()["fid"]["value"]
    direct = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    to_t = lambda ims: torch.from_numpy(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2)  # noqa: E731
    direct.update(to_t(ref), real=True)
    direct.update(to_t(gen), real=False)
    assert got == pytest.approx(float(direct.compute()), rel=1e-4)


# --- CLIP ------------------------------------------------------------------------------------

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _clip_image_direct(model, im):
    """The authors' ClipSimilarity.encode_image: [0, 1] floats, F.interpolate bicubic (no antialias,
    no clamp) to the model's size, CLIP normalisation."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=32, mode="bicubic", align_corners=False)
    x = (x - torch.from_numpy(CLIP_MEAN).view(1, 3, 1, 1)) / torch.from_numpy(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=x).pooler_output
        v = model.visual_projection(pooled)[0].numpy()
    return v / np.linalg.norm(v)


def test_clip_score_is_cosine_x100_with_authors_preprocessing(models):
    from transformers import CLIPModel

    from lego_core.metrics.clip_score import ClipScore

    # Two image sizes (two batches through the model); downscaling, where PIL's antialiased resize
    # would differ from the authors' torch bicubic.
    gen = _images(3, (50, 30), seed=11) + _images(2, (64, 64), seed=13)
    ref = _images(3, (50, 30), seed=12) + _images(2, (64, 64), seed=14)
    score = ClipScore(models["clip"])
    got = score.update(_batch(gen, ref))["clip"]
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    want = [100 * float(_clip_image_direct(model, g) @ _clip_image_direct(model, r)) for g, r in zip(gen, ref)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # The reference embeddings kept from the first set give the same scores for the next one.
    again = _batch(gen[::-1], ref[::-1])
    again.keys = again.keys[::-1]  # same key, same images, another order and grouping
    np.testing.assert_allclose(score.update(again)["clip"][::-1], got, rtol=1e-5)
    assert ClipScore(models["clip"]).update(_batch(ref[:1], ref[:1]))["clip"][0] == pytest.approx(100, abs=1e-3)


# --- BLIP ------------------------------------------------------------------------------------


def test_blip_caption_then_clip_text_cosine(models):
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPTokenizer

    from lego_core.metrics.blip_score import BlipScore

    gen, ref = _images(3, (40, 40), seed=13), _images(3, (40, 40), seed=14)
    descs = ["The person cuts the onion with a knife.", "open the fridge", None]
    got = BlipScore([f"b={models['blip']}"], clip_model=models["clip"]).update(_batch(gen, ref, descs))
    # Independently: BLIP captions one image at a time, prompt stripped, CLIP text cosine x 100.
    blip = BlipForConditionalGeneration.from_pretrained(models["blip"]).eval()
    proc = BlipProcessor.from_pretrained(models["blip"])
    clip = CLIPModel.from_pretrained(models["clip"]).eval()
    tok = CLIPTokenizer.from_pretrained(models["clip"])

    def text_vec(t):
        ids = tok([t], return_tensors="pt", truncation=True, max_length=77)
        with torch.no_grad():
            v = clip.text_projection(clip.text_model(**ids).pooler_output)[0].numpy()
        return v / np.linalg.norm(v)

    for i, (im, desc) in enumerate(zip(gen, descs)):
        inp = proc(images=im, text="a picture of", return_tensors="pt")
        with torch.no_grad():
            out = blip.generate(**inp, num_beams=3, min_length=5, max_length=20)
        cap = proc.decode(out[0], skip_special_tokens=True)
        assert cap.startswith("a picture of")
        cap = cap[len("a picture of"):].strip()
        assert got["blip_b_caption"][i] == cap
        if desc is None:
            assert got["blip_b"][i] is None
        else:
            assert got["blip_b"][i] == pytest.approx(100 * float(text_vec(cap) @ text_vec(desc)), abs=1e-3)


def test_blip_model_tags():
    from lego_core.metrics.blip_score import DEFAULT_BLIP, parse_blip_models

    assert [t for t, _ in parse_blip_models(DEFAULT_BLIP)] == ["b", "l"]
    assert parse_blip_models(["/x/blip-large-finetuned", "mine=/y"]) == [("l", "/x/blip-large-finetuned"),
                                                                         ("mine", "/y")]
    with pytest.raises(BadInput, match="tagged"):
        parse_blip_models(["a=/x", "a=/y"])


# --- weights missing -------------------------------------------------------------------------


def test_missing_hf_models_are_one_line_with_option(tmp_path, monkeypatch):
    from lego_core.metrics.blip_score import BlipScore
    from lego_core.metrics.clip_score import ClipScore

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(BadInput) as e:
        ClipScore("openai/clip-vit-large-patch14")
    msg = str(e.value)
    assert "openai/clip-vit-large-patch14" in msg and "--clip-model" in msg and "\n" not in msg
    with pytest.raises(BadInput, match="does not exist.*--clip-model"):
        ClipScore(str(tmp_path / "no-such-clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="--blip-model"):
        BlipScore([str(tmp_path / "empty")], clip_model=str(tmp_path / "empty"))


# --- images and matching ---------------------------------------------------------------------


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_decode_grayscale_rgba_16bit_palette():
    from lego_core.metrics.common import decode_image

    gray = Image.fromarray(np.full((4, 5), 100, np.uint8), "L")
    rgba = Image.fromarray(np.dstack([np.full((4, 5, 3), 50, np.uint8), np.zeros((4, 5), np.uint8)]), "RGBA")
    i16 = Image.fromarray(np.full((4, 5), 65535, np.uint16))
    pal = gray.convert("P")
    for im, value in ((gray, 100), (rgba, 50), (i16, 255), (pal, 100)):
        out = decode_image(_png(im))
        assert out.mode == "RGB" and out.size == (5, 4) and np.asarray(out).max() == value


def test_folder_matching_nested_and_duplicates(tmp_path):
    from lego_core.metrics.matching import match, open_source

    (tmp_path / "g" / "sub").mkdir(parents=True)
    (tmp_path / "r").mkdir()
    for p in ("g/a.png", "g/sub/b.jpg", "g/only-gen.png", "r/a.jpg", "r/sub/b.png", "r/only-ref.png"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        _images(1)[0].save(tmp_path / p)
    (tmp_path / "r" / "a.txt").write_text("cut the onion\n")
    g, r = open_source(str(tmp_path / "g"), "generated"), open_source(str(tmp_path / "r"), "reference")
    m = match(g, r)
    assert m.keys == ["a", "sub/b"] and m.only_generated == ["only-gen"] and m.only_reference == ["only-ref"]
    assert r.texts("a") == (None, "cut the onion") and r.texts("sub/b") == (None, None)
    _images(1)[0].save(tmp_path / "g" / "a.jpg")
    with pytest.raises(BadInput, match="differ only by extension"):
        open_source(str(tmp_path / "g"), "generated")
    (tmp_path / "x").mkdir()
    _images(1)[0].save(tmp_path / "x" / "zzz.png")
    with pytest.raises(BadInput, match="no keys in common"):
        match(open_source(str(tmp_path / "x"), "generated"), r)
    with pytest.raises(BadInput, match="does not exist"):
        open_source(str(tmp_path / "nope"), "reference")


def test_shard_reference_fields_and_description_order(tmp_path):
    from lego_core.data.shards import ShardWriter, iter_samples
    from lego_core.metrics.matching import open_source

    samples = list(iter_samples(SHARDS))[:3]
    samples[0]["enriched.txt"], samples[0]["curated.txt"] = b"enriched one", b"curated one"
    samples[1]["curated.txt"] = b"curated two"
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        for s in samples:
            w.write({k: v for k, v in s.items() if k != "__url__"})
    src = open_source(str(tmp_path / "s-000000.tar"), "reference")
    keys = [s["__key__"] for s in samples]
    assert src.keys() == set(keys)
    label2 = json.loads(samples[2]["meta.json"])["label"]
    assert [src.texts(k)[1] for k in keys] == ["enriched one", "curated two", label2]
    assert src.image(keys[1]) == samples[1]["target.jpg"] and src.input_image(keys[1]) == samples[1]["input.jpg"]
    gen = open_source(str(tmp_path / "s-000000.tar"), "generated")  # no generated field: falls back to target.jpg
    assert gen.image(keys[0]) == samples[0]["target.jpg"]
    with pytest.raises(BadInput, match="--generated-field"):
        open_source(str(tmp_path / "s-000000.tar"), "generated", image_field="generated.png")
    src.close()


def test_shard_reads_are_thread_safe():
    """The decoding threads read members of one shard concurrently (positional reads)."""
    from concurrent.futures import ThreadPoolExecutor

    from lego_core.data.shards import iter_samples
    from lego_core.metrics.matching import open_source

    want = {s["__key__"]: s["target.jpg"] for s in iter_samples(SHARDS)}
    src = open_source(SHARDS, "reference")
    keys = sorted(want) * 5
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(src.image, keys))
    src.close()
    assert all(g == want[k] for g, k in zip(got, keys))
