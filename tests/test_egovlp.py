"""EgoVLP and EgoVLP+ scores and the EgoVLP text score.

The port of EgoVLP's FrozenInTime model is checked three ways: its state-dict keys and shapes at the
authors' configuration against a manifest derived from showlab/EgoVLP's code (tests/data), its
forward pass against a naive loop-by-loop re-statement of the original algorithm, and tiny random
checkpoints saved the way the authors' files are (DataParallel `module.` keys under `state_dict`,
a pickled `parse_config.ConfigParser` beside them) loading strictly and giving back the embeddings
of the model they were saved from. Then the metrics against independent computations, and the CLI.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import run_cli, run_lego

from lego_core.errors import BadInput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = os.path.join(REPO, "shards")
MANIFEST = os.path.join(REPO, "tests", "data", "egovlp_official_keys.json")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from lego_core.kit.metric_models import make_tiny_distilbert_tokenizer, make_tiny_egovlp

    d = tmp_path_factory.mktemp("egovlp")
    return {
        "official": str(make_tiny_egovlp(d / "egovlp.pth")),
        "bare": str(make_tiny_egovlp(d / "bare.pth", layout="state_dict")),
        "tokenizer": str(make_tiny_distilbert_tokenizer(d / "distilbert")),
        "dir": d,
    }


def _images(n, size=(48, 40), seed=0):
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# --- the model ----------------------------------------------------------------------------------


def test_full_size_keys_and_shapes_match_the_official_manifest():
    from lego_core.metrics.egovlp import EgoVLP, EgoVLPConfig

    manifest = json.load(open(MANIFEST))
    assert manifest["count"] == len(manifest["keys"]) == 327
    with torch.device("meta"):
        model = EgoVLP(EgoVLPConfig())  # the defaults are the authors' configuration
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert ours == manifest["keys"]
    # Read back off the shapes, the official state dict gives the same architecture.
    sd = {k: torch.empty(s, device="meta") for k, s in manifest["keys"].items()}
    assert EgoVLPConfig.from_state_dict(sd) == EgoVLPConfig()


def _naive_forward(model, video):
    """FrozenInTime's video branch restated token by token from showlab/EgoVLP's
    video_transformer.py: patches cut by hand, each frame's tokens and each patch position's
    tokens attended group by group, one head at a time."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    d, heads, p = cfg.embed_dim, cfg.num_heads, cfg.patch_size
    hd = d // heads
    b_, t_ = video.shape[:2]
    g = cfg.img_size // p
    n = g * g
    v = "video_model."

    def ln(x, name):
        return F.layer_norm(x, (d,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    def attention(x, name, groups):
        qkv = lin(x, name + ".qkv")
        q, k, val = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
        out = torch.zeros_like(x)
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            qh, kh, vh = q[:, sl] * hd ** -0.5, k[:, sl], val[:, sl]
            out[0, sl] = torch.softmax(qh[0] @ kh.T, -1) @ vh  # CLS: every token
            for grp in groups:  # a patch token: the CLS token and its own group
                idx = [0] + grp
                out[grp, sl] = torch.softmax(qh[grp] @ kh[idx].T, -1) @ vh[idx]
        return lin(out, name + ".proj")

    w = sd[v + "patch_embed.proj.weight"].reshape(d, -1)
    outs = []
    for b in range(b_):
        toks = [sd[v + "cls_token"][0, 0] + sd[v + "pos_embed"][0, 0]]
        for f in range(t_):
            for r in range(g):
                for c in range(g):
                    patch = video[b, f, :, r * p:(r + 1) * p, c * p:(c + 1) * p].double().reshape(-1)
                    toks.append(w @ patch + sd[v + "patch_embed.proj.bias"] + sd[v + "pos_embed"][0, 1 + r * g + c]
                                + sd[v + "temporal_embed"][0, f])
        x = torch.stack(toks)
        space = [[1 + f * n + i for i in range(n)] for f in range(t_)]
        time = [[1 + f * n + i for f in range(t_)] for i in range(n)]
        for i in range(cfg.depth):
            blk = f"{v}blocks.{i}."
            time_residual = x + attention(ln(x, blk + "norm3"), blk + "timeattn", time)
            x = x + attention(ln(time_residual, blk + "norm1"), blk + "attn", space)
            x = x + lin(F.gelu(lin(ln(x, blk + "norm2"), blk + "mlp.fc1")), blk + "mlp.fc2")
        outs.append(lin(ln(x, v + "norm")[0], "vid_proj.0"))
    return torch.stack(outs)


@pytest.mark.parametrize("frames", [4, 3])
def test_video_forward_matches_naive_restatement(frames):
    from lego_core.kit.metric_models import tiny_egovlp

    model = tiny_egovlp(frames=4)  # 2 heads, 2 blocks, 4 patches per frame
    video = torch.randn(2, frames, 3, 32, 32)
    with torch.no_grad():
        got = model.compute_video(video).double()
    torch.testing.assert_close(got, _naive_forward(model, video), rtol=1e-4, atol=1e-4)


# --- loading ------------------------------------------------------------------------------------


def test_official_layout_loads_strictly_and_gives_the_saved_models_embeddings(ckpts):
    from lego_core.kit.metric_models import tiny_egovlp
    from lego_core.metrics.egovlp import load_egovlp, read_checkpoint

    raw = read_checkpoint(ckpts["official"])  # weights-only: the ConfigParser is an inert placeholder
    assert set(raw) == {"arch", "epoch", "state_dict", "optimizer", "monitor_best", "config"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert type(raw["config"]).__module__ == "parse_config"
    with pytest.raises(Exception):  # a plain torch.load cannot read it (parse_config is EgoVLP's code)
        torch.load(ckpts["official"], weights_only=False)

    saved = tiny_egovlp()  # the model make_tiny_egovlp saved (same seed)
    video = torch.randn(2, 4, 3, 32, 32)
    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want_v, want_t = saved.compute_video(video), saved.compute_text(ids, mask)
    for path in (ckpts["official"], ckpts["bare"]):
        model = load_egovlp(path, frames=4)
        assert not model.training
        with torch.no_grad():
            assert torch.equal(model.compute_video(video), want_v)
            assert torch.equal(model.compute_text(ids, mask), want_t)
    image_only = load_egovlp(ckpts["official"], frames=4, text=False)
    assert not image_only.has_text and not any(k.startswith("text_model") for k in image_only.state_dict())
    with torch.no_grad():
        assert torch.equal(image_only.compute_video(video), want_v)


def test_strict_keys_and_temporal_embedding(ckpts, tmp_path):
    from lego_core.metrics.egovlp import load_egovlp, read_checkpoint

    sd = read_checkpoint(ckpts["official"])["state_dict"]
    missing = {k: v for k, v in sd.items() if "blocks.1.timeattn.proj" not in k}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(BadInput, match=r"missing.pth is not an EgoVLP.*2 missing \(e.g. video_model.blocks.1.timeattn"):
        load_egovlp(tmp_path / "missing.pth")
    torch.save({"state_dict": {**sd, "module.video_model.head.weight": torch.zeros(3, 128)}}, tmp_path / "extra.pth")
    with pytest.raises(BadInput, match=r"1 unexpected \(e.g. video_model.head.weight\)"):
        load_egovlp(tmp_path / "extra.pth")
    # A constant buffer some transformers versions saved is the one key tolerated.
    pos_ids = torch.arange(64).expand(1, -1)
    torch.save({"state_dict": {**sd, "module.text_model.embeddings.position_ids": pos_ids}}, tmp_path / "pos.pth")
    load_egovlp(tmp_path / "pos.pth")
    # A legacy (pre-zip) torch file loads too.
    torch.save({"state_dict": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    load_egovlp(tmp_path / "legacy.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot read checkpoint"):
        load_egovlp(tmp_path / "junk.pth")
    # More frames than the checkpoint's temporal embeddings: the extra rows are zero (the authors' fix).
    long = load_egovlp(ckpts["official"], frames=6)
    te = long.video_model.temporal_embed
    assert te.shape == (1, 6, 128) and torch.equal(te[:, :4], sd["module.video_model.temporal_embed"])
    assert not te[:, 4:].any()


def test_missing_checkpoint_is_one_line_with_where_published(tmp_path, monkeypatch):
    from lego_core.metrics.egovlp_score import default_frames, find_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BadInput) as e:
        find_checkpoint(None, 4)
    msg = str(e.value)
    assert "\n" not in msg and "egovlp.pth" in msg and str(tmp_path / "torch") in msg and "--egovlp" in msg
    assert "drive.google.com/file/d/1-cP3Gcg0NGDcMZalgJ_615BQdbFIbcj7" in msg and "showlab/EgoVLP" in msg
    with pytest.raises(BadInput, match="epic_mir_plus.pth.*1-SOQeXc-xSn544sJzgFLhC95hkQsm0BR"):
        find_checkpoint(None, 16)
    with pytest.raises(BadInput, match=r"nope/epic_mir_plus.pth does not exist \(--egovlp\).*EPIC-KITCHENS"):
        find_checkpoint("nope/epic_mir_plus.pth")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "egovlp.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_checkpoint(None, 4) == str(cached)
    assert default_frames("/w/epic_mir_plus.pth") == 16 and default_frames("/w/egovlp.pth") == 4
    assert default_frames(None) == 4


# --- the metrics --------------------------------------------------------------------------------


def test_frame_preprocessing_is_the_authors_torchvision_pipeline():
    """Their run_egovlp: ToTensor, stack T frames as C×T×H×W, Resize(224) + CenterCrop(224) on the
    tensor (torchvision of their version: bilinear, no antialias), NormalizeVideo(ImageNet)."""
    from types import SimpleNamespace

    from torchvision import transforms

    from lego_core.metrics.egovlp_score import IMAGENET_MEAN, IMAGENET_STD, EgoVLPEncoder

    tf = transforms.Compose([transforms.Resize(224, antialias=False), transforms.CenterCrop(224)])
    for size in ((256, 256), (456, 256), (300, 401)):
        im = _images(1, size, seed=size[0])[0]
        clip = torch.stack([transforms.ToTensor()(im)] * 4).transpose(0, 1)  # C×T×H×W
        want = tf(clip)
        want = ((want - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1))
        got = EgoVLPEncoder.frame(SimpleNamespace(size=224), im)
        assert got.shape == (3, 224, 224)
        torch.testing.assert_close(got, want[:, 0], rtol=0, atol=1e-5)


def _batch(gen, ref, inputs=None, keys=None):
    from lego_core.metrics.common import Batch

    keys = keys or [f"k{i}" for i in range(len(gen))]
    return Batch(keys, gen, ref, inputs=inputs or [], descriptions=[None] * len(gen), labels=[None] * len(gen))


def test_egovlp_and_plus_scores_against_direct_computation(ckpts):
    from lego_core.metrics.common import Shared
    from lego_core.metrics.egovlp_score import EgoVLPPlusScore, EgoVLPScore

    shared = Shared()
    ev = EgoVLPScore(ckpts["official"], 4, shared=shared)
    plus = EgoVLPPlusScore(ckpts["official"], 4, shared=shared)
    assert plus.enc is ev.enc  # one model for both
    gen, ref, inp = _images(3, seed=1), _images(3, seed=2), _images(3, size=(64, 40), seed=3)
    enc = ev.enc
    got = ev.update(_batch(gen, ref))["egovlp"]
    got_plus = plus.update(_batch(gen, ref, inp))["egovlp_plus"]

    def emb(frames):
        with torch.no_grad():
            return F.normalize(enc.model.compute_video(torch.stack([enc.frame(f) for f in frames])[None]), dim=-1)[0]

    for i in range(3):
        want = 100 * float(emb([gen[i]] * 4) @ emb([ref[i]] * 4))
        want_plus = 100 * float(emb([inp[i], inp[i], gen[i], gen[i]]) @ emb([inp[i], inp[i], ref[i], ref[i]]))
        assert got[i] == pytest.approx(want, abs=1e-4) and got_plus[i] == pytest.approx(want_plus, abs=1e-4)
        assert abs(got[i] - got_plus[i]) > 1e-3  # the input frame changes the score
    # Identical images score 100; a sample without an input frame gets no EgoVLP+ value.
    assert ev.update(_batch(ref[:1], ref[:1], keys=["same"]))["egovlp"] == [pytest.approx(100.0, abs=1e-3)]
    assert plus.update(_batch(gen[:2], ref[:2], [inp[0], None], keys=["a", "b"]))["egovlp_plus"][1] is None
    # Another input frame for the same images: another EgoVLP+ score (fresh metric, no cache).
    other = EgoVLPPlusScore(ckpts["official"], 4, shared=shared).update(_batch(gen, ref, _images(3, seed=9)))
    assert all(abs(a - b) > 1e-3 for a, b in zip(other["egovlp_plus"], got_plus))
    # Reference embeddings are kept per key: a second generated set only embeds its own images.
    calls = []
    orig = enc.embed_clips
    enc.embed_clips = lambda clips: calls.append(len(clips)) or orig(clips)
    try:
        again = ev.update(_batch(gen, ref))["egovlp"]
    finally:
        enc.embed_clips = orig
    assert calls == [3] and again == pytest.approx(got, abs=1e-5)
    s = plus.settings()
    assert s["frames"] == 4 and s["clip"].startswith("[X]*2 + [Y]*2") and "CenterCrop(32)" in s["preprocessing"]
    with pytest.raises(BadInput, match="even"):
        EgoVLPPlusScore(ckpts["official"], 3, shared=shared)


def test_blip_score_with_egovlp_text_encoder(ckpts, tmp_path):
    """The authors' variant: caption and description through EgoVLP's DistilBERT + txt_proj,
    each text tokenized on its own (their loop), cosine ×100."""
    from transformers import AutoTokenizer

    from lego_core.kit.metric_models import make_tiny_blip
    from lego_core.metrics.blip_score import BlipScore
    from lego_core.metrics.common import Shared

    blip = make_tiny_blip(tmp_path / "blip")
    shared = Shared()
    m = BlipScore([f"b={blip}"], device="cpu", shared=shared, text_encoder="egovlp", egovlp=ckpts["official"],
                  egovlp_frames=4, egovlp_tokenizer=ckpts["tokenizer"])
    assert m.clip is None and "EgoVLP text branch" in m.settings()["text_encoder"]
    gen = _images(2, seed=4)
    desc = ["cut the onion on the board with a knife", "open the fridge"]
    from lego_core.metrics.common import Batch

    out = m.update(Batch(["a", "b"], gen, gen, descriptions=desc, labels=[None, None]))
    tok = AutoTokenizer.from_pretrained(ckpts["tokenizer"])
    model = m.egovlp_text.encoder.model
    for i in range(2):
        with torch.no_grad():
            c = model.compute_text(**{k: v for k, v in tok(out["blip_b_caption"][i], return_tensors="pt",
                                                              padding=True, truncation=True).items()})
            d = model.compute_text(**{k: v for k, v in tok(desc[i], return_tensors="pt", padding=True,
                                                              truncation=True).items()})
        assert out["blip_b"][i] == pytest.approx(100 * float(F.cosine_similarity(c, d)), abs=1e-4)
    with pytest.raises(BadInput, match="want clip or egovlp"):
        BlipScore([f"b={blip}"], shared=shared, text_encoder="bert")


# --- lego evaluate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_folder(tmp_path_factory):
    from lego_core.data.shards import iter_samples

    d = tmp_path_factory.mktemp("egovlp-gen")
    rng = np.random.RandomState(0)
    samples = list(iter_samples(SHARDS))[:3]
    for s in samples:
        im = np.asarray(Image.open(io.BytesIO(s["target.jpg"])).convert("RGB"), np.float64)
        noisy = np.clip(im + rng.normal(0, 30, im.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(d / f"{s['__key__']}.png")
    return d, [s["__key__"] for s in samples]


def test_cli_egovlp_scores(ckpts, gen_folder, tmp_path, monkeypatch):
    gen, keys = gen_folder
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached: the defaults leave EgoVLP out
    out = tmp_path / "out"
    r = run_cli("-q", "evaluate", "-g", gen, "-r", SHARDS, "--metrics", "psnr,egovlp,egovlp+", "--egovlp",
                ckpts["official"], "--egovlp-frames", "4", "--batch-size", "2", "-o", out)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "metrics.json").read_text())
    for c in ("egovlp", "egovlp_plus"):
        assert meta["metrics"][c]["n"] == 3 and meta["metrics"][c]["higher_is_better"] is True
        assert -100 <= meta["metrics"][c]["mean"] <= 100
    assert meta["settings"]["egovlp"]["frames"] == 4 and meta["settings"]["egovlp+"]["checkpoint"] == ckpts["official"]
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert [row["key"] for row in rows] == sorted(keys) and all(row["egovlp_plus"] for row in rows)
    assert "egovlp" in (out / "report.html").read_text()

    # Default metric set with --egovlp: the EgoVLP scores are in; without a checkpoint they are left out.
    r = run_cli("-q", "evaluate", "-g", gen, "-r", SHARDS, "--metrics", "psnr,egovlp", "--egovlp", ckpts["official"],
                "--json")
    assert r.exit_code == 0 and "egovlp" in json.loads(r.output)["table"]["columns"]
    # Chosen but missing: exit 2, one line naming the file and where the authors publish it.
    r = run_lego("evaluate", "-g", gen, "-r", SHARDS, "--metrics", "egovlp", env={"TORCH_HOME": str(tmp_path / "t")})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "egovlp.pth" in r.stderr and "showlab/EgoVLP" in r.stderr
    r = run_lego("evaluate", "-g", gen, "-r", SHARDS, "--metrics", "egovlp", "--egovlp", tmp_path / "no.pth")
    assert r.returncode == 2 and "no.pth does not exist (--egovlp)" in r.stderr
    # EgoVLP+ needs input frames: a folder reference has none.
    r = run_lego("evaluate", "-g", gen, "-r", gen, "--metrics", "egovlp+", "--egovlp", ckpts["official"])
    assert r.returncode == 2 and "input frame" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_default_metrics_without_checkpoint_leave_egovlp_out(gen_folder, tmp_path, monkeypatch):
    from lego_core.metrics.runner import EvalConfig
    from lego_core.metrics.selection import check_egovlp
    from lego_core.metrics.matching import open_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ref = open_source(SHARDS, "reference")
    try:
        cfg = check_egovlp(EvalConfig(metrics=("psnr", "egovlp", "egovlp_plus")), ref, sorted(ref.keys()))
        assert cfg.metrics == ("psnr",)
        with pytest.raises(BadInput, match="egovlp.pth"):
            check_egovlp(EvalConfig(metrics=("egovlp",), metrics_explicit=True), ref, sorted(ref.keys()))
        with pytest.raises(BadInput, match="egovlp.pth"):  # the EgoVLP text encoder chosen by flag
            check_egovlp(EvalConfig(metrics=("blip",), blip_text_encoder="egovlp"), ref, sorted(ref.keys()))
    finally:
        ref.close()
    assert EvalConfig(metrics=("egovlp_plus",)).metrics == ("egovlp+",)
    with pytest.raises(BadInput, match="--blip-text-encoder"):
        EvalConfig(blip_text_encoder="bert")

