"""`lego train`: the recipe on tiny models, DeepSpeed single- and two-process, ZeRO-3, resume."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LEGO, REPO, run_cli
from lego_core.data.shards import ShardWriter, iter_samples
from lego_core.diffusion.train import cfg_dropout_masks, min_snr_weights
from lego_core.engine.launch import detect_launch, slurm_head_node
from lego_core.kit import make_tiny_sd

D, M = 16, 4
FAST = ["--resolution", "64", "--batch-size", "2", "--grad-accum", "1", "--workers", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("sd"), sample_size=8)


@pytest.fixture(scope="module")
def enriched(tmp_path_factory):
    """The bundled shards with what `lego enrich` adds (random embeddings), in 4 shards."""
    out = tmp_path_factory.mktemp("enriched")
    rng = np.random.default_rng(0)
    with ShardWriter(str(out / "e-%06d.tar"), max_samples=6) as w:
        for s in iter_samples([str(REPO / "shards")]):
            meta = json.loads(s["meta.json"])
            s = {k: v for k, v in s.items() if not k.startswith("__url")}
            s["enriched.txt"] = f"Hold the {meta['noun'] or 'object'} with the left hand and {meta['label']}."
            s["vllm_img.npy"] = rng.standard_normal((M, D)).astype(np.float16)
            s["vllm_txt.npy"] = rng.standard_normal((int(rng.integers(3, 9)), D)).astype(np.float16)
            w.write(s)
    return out


def env(**extra):
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **extra}


def test_slurm_and_torchrun_detection():
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_ID": "0"}          # an srun task
    d = detect_launch(slurm)
    assert (d.launcher, d.rank, d.world_size, d.local_rank, d.master_addr) == ("slurm", 1, 2, 1, "gpu07")
    assert detect_launch({**slurm, "MASTER_PORT": "1234"}).master_port == 1234
    t = detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "5",
                       "TORCHELASTIC_RUN_ID": "x", **slurm})
    assert (t.launcher, t.rank, t.world_size, t.local_rank) == ("torchrun", 3, 4, 1)
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"
    # a plain `lego train` in an `sbatch --nodes=2` script: the batch step has SLURM_PROCID/NTASKS
    # but no srun step id, and is one process, not rank 0 of 2 waiting for a rank 1
    batch = {k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"} | {"SLURM_PROCID": "0"}
    assert detect_launch(batch).launcher == "single"
    assert detect_launch({**batch, "SLURM_STEP_ID": "batch"}).launcher == "single"
    assert slurm_head_node("a[1-3],b2") == "a1" and slurm_head_node("node12") == "node12"
    assert slurm_head_node("node[1-2]-ib") == "node1-ib"     # more forms in test_engine.py


def test_cfg_dropout_is_three_way_five_percent_each():
    keep_text, keep_image = cfg_dropout_masks(200_000, 0.05, torch.Generator().manual_seed(0), "cpu")
    text_only = ((keep_text == 0) & (keep_image == 1)).float().mean()
    both = ((keep_text == 0) & (keep_image == 0)).float().mean()
    image_only = ((keep_text == 1) & (keep_image == 0)).float().mean()
    for share in (text_only, both, image_only):
        assert abs(share - 0.05) < 0.003


def test_min_snr_weights_cap_the_easy_timesteps_at_gamma_over_snr():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = torch.tensor([0, 100, 400, 999])
    a = sched.alphas_cumprod[t]
    snr = a / (1 - a)                                        # ᾱ / (1 − ᾱ)
    eps = min_snr_weights(sched, t, 5.0, v_prediction=False)
    assert torch.allclose(eps, torch.minimum(snr, torch.tensor(5.0)) / snr, rtol=1e-4)
    assert eps[0] < 0.01 and eps[-1] == 1.0                  # nearly clean: down-weighted; noisy: untouched
    v = min_snr_weights(sched, t, 5.0, v_prediction=True)
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1), rtol=1e-4)


def test_noise_is_added_the_ddpm_way_not_the_samplers(base):
    """The UNet trains on √ᾱ·y + √(1-ᾱ)·ε (as SD and diffusers' InstructPix2Pix script), not on the
    Euler sampler's y + σ·ε, which the pipeline only feeds it after scale_model_input."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.train import DiffusionStep, TrainConfig

    pipe = build_from_pretrained(base, conditioning="description")
    seen = {}

    def engine(noisy, x, t, *rest):
        seen.update(noisy=noisy, t=t)
        return torch.zeros_like(noisy)

    step = DiffusionStep(pipe, engine, torch.float32, "cpu", TrainConfig(shards=[], out="", cfg_dropout=0.0))
    y = torch.full((64, 4, 16, 16), 3.0)
    step.latents = lambda batch: (y, torch.zeros_like(y))
    torch.manual_seed(0)
    step.loss({"text": ["cut onion"] * 64})
    c = pipe.scheduler.config   # SD's scaled_linear betas, computed here independently of diffusers
    betas = torch.linspace(c.beta_start ** 0.5, c.beta_end ** 0.5, c.num_train_timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[seen["t"]].float()
    noisy = seen["noisy"].flatten(1)
    torch.testing.assert_close(noisy.mean(1), 3 * abar.sqrt(), atol=0.25, rtol=0)
    torch.testing.assert_close(noisy.std(1), (1 - abar).sqrt(), atol=0.15, rtol=0)


def test_a_v_prediction_base_trains_on_the_velocity(tmp_path):
    """A base whose scheduler says v_prediction (SD-2's target; the demo's tiny UNet) is trained on
    v = √ᾱ·ε − √(1−ᾱ)·y, computed here by hand, not on ε."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.train import DiffusionStep, TrainConfig

    pipe = build_from_pretrained(make_tiny_sd(tmp_path / "sd", sample_size=8, prediction_type="v_prediction"),
                                 conditioning="description")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    seen = {}

    def engine(noisy, x, t, *rest):
        seen.update(noisy=noisy, t=t)
        return torch.zeros_like(noisy)

    step = DiffusionStep(pipe, engine, torch.float32, "cpu", TrainConfig(shards=[], out="", cfg_dropout=0.0))
    y = torch.randn(8, 4, 8, 8)
    step.latents = lambda batch: (y, torch.zeros_like(y))
    loss = step.loss({"text": ["cut onion"] * 8})      # prediction 0: the loss is the target's mean square
    c = pipe.scheduler.config
    betas = torch.linspace(c.beta_start ** 0.5, c.beta_end ** 0.5, c.num_train_timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[seen["t"]].float().view(-1, 1, 1, 1)
    noise = (seen["noisy"] - abar.sqrt() * y) / (1 - abar).sqrt()
    v = abar.sqrt() * noise - (1 - abar).sqrt() * y
    torch.testing.assert_close(loss, v.pow(2).mean(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(loss, noise.pow(2).mean(), rtol=1e-2)


def test_overfits_a_fixed_batch_and_trains_the_conditioner(base, enriched):
    """Fixed noise and timesteps: loss after 30 steps < half the first; σ, μ, π get gradients."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.data import DecodeSample, collate
    from lego_core.diffusion.train import Denoiser, DiffusionStep, TrainConfig, trainable_parameters
    from lego_core.engine.config import EngineOptions, deepspeed_config
    from lego_core.engine.launch import detect_launch, init_distributed, shutdown

    init_distributed(detect_launch({}))
    try:
        torch.manual_seed(0)
        pipe = build_from_pretrained(base, conditioning="description+joint", vllm=D)
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        denoiser = Denoiser(pipe.unet, pipe.conditioner)
        params = trainable_parameters(denoiser)
        cfg = TrainConfig(shards=[], out="", resolution=64, engine=EngineOptions(micro_batch=4, grad_accum=1,
                                                                                   precision="fp32"))
        opt = torch.optim.AdamW(params, lr=1e-3)
        engine, *_ = deepspeed.initialize(model=denoiser, optimizer=opt, model_parameters=params,
                                          config=deepspeed_config(cfg.engine, 1))
        step = DiffusionStep(pipe, engine, torch.float32, "cpu", cfg)
        decode = DecodeSample("description+joint", 64)
        batch = collate([decode(s) for _, s in zip(range(4), iter_samples([str(enriched)]))])
        losses = []
        for i in range(30):
            torch.manual_seed(0)                      # same noise, timesteps and dropout every step
            loss = step.loss(batch)
            engine.backward(loss)
            if i == 0:
                for name in ("projection_img", "projection_txt", "self_attn_mix"):
                    grads = [safe_get_full_grad(p) for p in getattr(pipe.conditioner, name).parameters()]
                    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
            engine.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses
    finally:
        shutdown()


def state_of(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_train_changes_unet_and_conditioner_not_vae_or_text_encoder(base, enriched, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from lego_core.diffusion.build import build_from_pretrained, load_pipeline

    run = tmp_path / "run"
    result = run_cli("-q", "train", str(enriched), "--base", base, "--out", run, "--max-steps", "4", *FAST,
                     "--checkpoint-every", "2", "--no-ema", "--json", "--val-shards", str(enriched / "e-000000.tar"),
                     "--val-every", "4", "--val-samples", "2", "--val-steps", "2")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["model"] == str(run / "model")
    info = json.loads((run / "model" / "lego.json").read_text())     # what `lego generate` defaults to
    assert (info["resolution"], info["validation_steps"], info["training_steps"]) == (64, 2, 4)
    trained = load_pipeline(run / "model")
    torch.manual_seed(0)
    initial = build_from_pretrained(base, conditioning="description+joint", vllm=D)
    for name in ("projection_img", "projection_txt", "self_attn_mix"):
        a, b = state_of(getattr(initial.conditioner, name)), state_of(getattr(trained.conditioner, name))
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{name} did not change"
    assert any(not torch.equal(a, b) for a, b in zip(initial.unet.parameters(), trained.unet.parameters()))
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), trained.vae.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(text.parameters(), trained.text_encoder.parameters()))
    assert trained.unet.config.in_channels == 8
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == \
        ["step-00000002", "step-00000004"]
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "validation"] == [4]
    assert Image.open(run / "samples" / "step-00000004.jpg").size == (3 * 64, 2 * 64)   # input|generated|target
    config = json.loads((run / "train-config.json").read_text())
    # --zero 2 asked (the default), one rank in fp32: the plain engine (ZeRO would only add copies)
    assert config["engine"]["zero_stage"] == 2 and config["resolved"]["deepspeed"]["zero_optimization"]["stage"] == 0

    # A rerun of the finished run is a no-op, as for tune-vllm: nothing trained, nothing re-exported.
    weights = {p: p.stat().st_mtime_ns for p in (run / "model").rglob("*.safetensors")}
    again = run_cli("-q", "train", str(enriched), "--base", base, "--out", run, "--max-steps", "4", *FAST,
                    "--checkpoint-every", "2", "--no-ema", "--json", "--val-shards", str(enriched / "e-000000.tar"),
                    "--val-every", "4", "--val-samples", "2", "--val-steps", "2")
    assert again.exit_code == 0, again.output
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "done" and last["steps_run"] == 0
    assert weights and {p: p.stat().st_mtime_ns for p in weights} == weights


def test_zero3_and_cached_latents(base, enriched, tmp_path):
    run = tmp_path / "run"
    result = run_cli("-q", "train", str(enriched), "--base", base, "--out", run, "--max-steps", "2", *FAST,
                     "--zero", "3", "--cache-latents", "--conditioning", "description+image")
    assert result.exit_code == 0, result.output
    cached = list(iter_samples([str(p) for p in sorted((run / "latents").glob("*.tar"))]))
    assert len(cached) == 22
    assert np.load(io.BytesIO(cached[0]["target_latent.npy"])).shape == (8, 8, 8)   # mean + logvar
    assert np.load(io.BytesIO(cached[0]["input_latent.npy"])).shape == (4, 8, 8)
    gen = run_cli("generate", REPO / "tests" / "data" / "frame.jpg", "cut onion", "--model", run / "model",
                  "-o", tmp_path / "g.png", "--steps", "1", "--size", "64")
    assert gen.exit_code == 2 and "--vllm" in gen.stderr       # it loads, and knows it needs the VLLM


def _exported_weights(folder):
    from lego_core.diffusion.build import load_pipeline

    pipe = load_pipeline(folder)
    return {**{f"unet.{k}": v for k, v in state_of(pipe.unet).items()},
            **{f"conditioner.{k}": v for k, v in state_of(pipe.conditioner).items()}}


def checkpoint_weights(run, step: int) -> dict:
    """A checkpoint's fp32 weights: ZeRO-3's partitions through DeepSpeed's zero_to_fp32; on one fp32
    rank (the plain engine) and under ZeRO-1/2 the model-states file holds them whole."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = f"step-{step:08d}"
    folder = run / "checkpoints" / tag
    if any(folder.glob("zero_pp_rank_*model_states.pt")):       # ZeRO-3 writes one per rank
        return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag)
    module = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in module.items()}


def _assert_exported_ema_of_checkpoints(run):
    """RUN/model holds the EMA of steps 1-3's weights (read from the checkpoints), with diffusers'
    warm-up decay (0, 2/11, 3/12) — not the last step's weights."""
    raw = [checkpoint_weights(run, step) for step in (1, 2, 3)]
    want = dict(raw[0])
    for decay, weights in ((2 / 11, raw[1]), (3 / 12, raw[2])):
        want = {k: decay * want[k] + (1 - decay) * weights[k] for k in want}
    got = _exported_weights(run / "model")
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.allclose(got[k], raw[2][k]) for k in want)


def test_ema_is_exported_under_zero2_and_zero3_across_a_resume(base, enriched, tmp_path):
    args = ["train", str(enriched), "--base", base, "--max-steps", "3", *FAST, "--conditioning", "description",
            "--checkpoint-every", "1", "--keep-checkpoints", "3"]
    assert run_cli("-q", *args, "--out", tmp_path / "z2").exit_code == 0
    _assert_exported_ema_of_checkpoints(tmp_path / "z2")

    # ZeRO-3 on 2 ranks with a low persistence threshold (most tensors partitioned, the small ones
    # kept whole on every rank); stopped after 2 steps and resumed, so each rank's EMA partition goes
    # through a checkpoint.
    from lego_core.engine.launch import free_port

    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 200},
                              "gradient_clipping": 1.0, "steps_per_print": 10 ** 9}))
    z3 = tmp_path / "z3"
    for steps in ("2", "3"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "lego_cli.main", "-q", *map(str, args), "--out", str(z3), "--deepspeed", str(ds),
               "--max-steps", steps]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (z3 / "checkpoints" / "step-00000002").glob("ema-*")} == {"ema-rank0.pt", "ema-rank1.pt"}
    _assert_exported_ema_of_checkpoints(z3)


def test_ema_per_micro_batch_as_the_authors(base, enriched, tmp_path):
    """--ema-update micro-batch: the EMA is updated after every micro-batch (the authors' LitEma in
    on_train_batch_end), so at --grad-accum 2 it averages w0, w1, w1, w2 (the weights only change at
    optimizer steps) with the warm-up decays 0, 2/11, 3/12, 4/13 — not the per-step w1, w2."""
    from lego_core.diffusion.build import build_from_pretrained

    run = tmp_path / "run"
    fast = list(FAST)
    fast[fast.index("--grad-accum") + 1] = "2"
    result = run_cli("-q", "train", str(enriched), "--base", base, "--max-steps", "2", *fast, "--conditioning",
                     "description", "--checkpoint-every", "1", "--ema-update", "micro-batch", "--out", run)
    assert result.exit_code == 0, result.output
    w1, w2 = (checkpoint_weights(run, s) for s in (1, 2))
    w0 = {f"unet.{k}": v
          for k, v in state_of(build_from_pretrained(base, conditioning="description", vllm=D).unet).items()}
    want = dict(w0)
    for decay, weights in ((2 / 11, w1), (3 / 12, w1), (4 / 13, w2)):
        want = {k: decay * want[k] + (1 - decay) * weights[k] for k in want}
    got = _exported_weights(run / "model")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_default_length_is_the_papers_20000_steps_and_the_plan_is_said(base, enriched, tmp_path, monkeypatch, caplog):
    """No --max-steps and no --epochs: the paper's 20,000 optimizer steps (one epoch of Ego4D on 8
    GPUs would be ≈ 84), said at start with the samples per step and the epochs they amount to."""
    import logging

    from lego_core.diffusion import train as train_module
    from lego_core.diffusion.train import TrainConfig, steps_for

    cfg = TrainConfig(shards=[], out="")
    assert steps_for(cfg, 86_000, 8) == 20_000
    assert steps_for(TrainConfig(shards=[], out="", epochs=1.0), 86_000, 8) == 84     # 32 x 4 x 8 per step
    assert steps_for(TrainConfig(shards=[], out="", epochs=1.0, max_steps=7), 86_000, 8) == 7

    monkeypatch.setattr(train_module, "PAPER_STEPS", 2)      # the CLI's default path, made short
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="lego.train"):
        result = run_cli("train", str(enriched), "--base", base, "--out", run, *FAST, "--conditioning", "label",
                         "--no-ema", "--checkpoint-every", "10")
    assert result.exit_code == 0, result.output
    n = json.loads((run / "train-config.json").read_text())["resolved"]["samples"]
    assert json.loads((run / "train-config.json").read_text())["resolved"]["total_steps"] == 2
    assert (f"training plan: 2 optimizer steps (the paper's; --max-steps or --epochs to change) x 2 samples per "
            f"step (2 per micro-batch x 1 accumulated x 1 rank(s)) = {4 / n:,.1f} epochs of {n} samples") in caplog.text


def test_shards_missing_what_the_conditioning_needs_exit_2(base, tmp_path):
    result = run_cli("train", str(REPO / "shards"), "--base", base, "--out", tmp_path / "run", "--max-steps", "1",
                     *FAST)
    assert result.exit_code == 2
    assert "enriched.txt" in result.stderr and "lego enrich" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_two_ranks_zero2_see_disjoint_samples(base, enriched, tmp_path):
    run = tmp_path / "run"
    from lego_core.engine.launch import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "lego_cli.main", "-q", "train", str(enriched), "--base", str(base), "--out", str(run),
           "--max-steps", "3", *FAST, "--record-keys", "--shuffle-buffer", "0", "--checkpoint-every", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run / "model")     # printed once, by rank 0
    assert proc.stdout.count(str(run / "model")) == 1
    seen = [{line.split()[1] for line in (run / f"keys-rank{r}.txt").read_text().splitlines()} for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert (run / "model" / "model_index.json").is_file()


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_at_the_last_checkpoint(base, enriched, tmp_path):
    run = tmp_path / "run"
    args = [LEGO, "-q", "train", str(enriched), "--base", str(base), "--out", str(run), "--max-steps", "40",
            *FAST, "--checkpoint-every", "2", "--conditioning", "description"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, env=env(), stdout=log, stderr=log)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step-00000004" / "lego-state.json").exists() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    resume = [e for e in events if e.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] >= 4 and resume[0]["step"] % 2 == 0
    final = [e for e in events if e.get("event") == "done"]
    assert final[-1]["step"] == 40 and final[-1]["steps_run"] == 40 - resume[0]["step"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".partial")]
    gen = run_cli("generate", REPO / "tests" / "data" / "frame.jpg", "cut onion", "--model", run / "model",
                  "-o", tmp_path / "g.png", "--steps", "1", "--size", "64")
    assert gen.exit_code == 0, gen.output


def _cache_counts(paths):
    return [len(list(iter_samples([str(p)]))) for p in paths]


@pytest.mark.slow
def test_latent_cache_mirrors_input_shards_and_trains_on_two_ranks(base, enriched, tmp_path):
    """One cache shard per input shard (same samples), so 4 shards still split across 2 ranks;
    the ranks share the encoding and train on disjoint samples."""
    from lego_core.engine.launch import free_port

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "lego_cli.main", "-q", "train", str(enriched), "--base", str(base), "--out", str(run),
           "--max-steps", "2", *FAST, "--cache-latents", "--record-keys", "--shuffle-buffer", "0",
           "--checkpoint-every", "2", "--conditioning", "description", "--no-ema"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs = sorted(enriched.glob("*.tar"))
    cache = sorted((run / "latents").glob("*.tar"))
    assert [p.name for p in cache] == [f"latents-{i:06d}.tar" for i in range(len(inputs))]
    assert _cache_counts(cache) == _cache_counts(inputs) == [6, 6, 6, 4]
    assert [[s["__key__"] for s in iter_samples([str(p)])] for p in cache] == \
        [[s["__key__"] for s in iter_samples([str(p)])] for p in inputs]
    assert not [p for p in (run / "latents").iterdir() if ".tmp-" in p.name]
    seen = [{line.split()[1] for line in (run / f"keys-rank{r}.txt").read_text().splitlines()} for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_latent_cache_rebuilds_when_the_run_changes_and_resumes_when_not(base, enriched, tmp_path, caplog):
    from lego_core.diffusion.latents import cache_latents

    shards = [str(p) for p in sorted(enriched.glob("*.tar"))]
    out = str(tmp_path / "latents" / "latents-%06d.tar")
    first = cache_latents(shards, base, out, resolution=64, progress=False)
    assert np.load(io.BytesIO(next(iter_samples(first))["input_latent.npy"])).shape == (4, 8, 8)
    assert json.loads((tmp_path / "latents" / "manifest.json").read_text())["resolution"] == 64

    # killed mid-pass: shard 2 missing, a temp left; the rerun writes only shard 2
    mtimes = {p: os.stat(p).st_mtime_ns for p in first}
    os.remove(first[2])
    (tmp_path / "latents" / ".latents-000002.tar.tmp-999999").write_bytes(b"half")
    again = cache_latents(shards, base, out, resolution=64, progress=False)
    assert again == first and _cache_counts(again) == [6, 6, 6, 4]
    assert [os.stat(p).st_mtime_ns == mtimes[p] for p in first] == [True, True, False, True]
    assert not list((tmp_path / "latents").glob(".*tmp-*"))

    # another resolution: rebuilt, with a warning
    with caplog.at_level("WARNING", logger="lego.latents"):
        small = cache_latents(shards, base, out, resolution=32, progress=False)
    assert "rebuilding" in caplog.text and "resolution" in caplog.text
    assert {np.load(io.BytesIO(s["input_latent.npy"])).shape for s in iter_samples(small)} == {(4, 4, 4)}

    # fewer inputs: only their cache shards, only their samples
    one = cache_latents(shards[:1], base, out, resolution=32, progress=False)
    assert len(one) == 1 and sorted((tmp_path / "latents").glob("*.tar")) == [Path(one[0])]
    assert [s["__key__"] for s in iter_samples(one)] == [s["__key__"] for s in iter_samples(shards[:1])]

    # overwrite: wiped and rebuilt even though nothing changed
    stray = tmp_path / "latents" / "latents-000099.tar"
    stray.write_bytes(b"")
    before = os.stat(one[0]).st_mtime_ns
    cache_latents(shards[:1], base, out, resolution=32, progress=False, overwrite=True)
    assert not stray.exists() and os.stat(one[0]).st_mtime_ns != before


def test_train_overwrite_clears_the_cache_and_a_smaller_input_set_trains_on_its_own_keys(base, enriched, tmp_path):
    from lego_core.diffusion.latents import cache_latents

    run = tmp_path / "run"
    shards = [str(p) for p in sorted(enriched.glob("*.tar"))]
    cache_latents(shards, base, str(run / "latents" / "latents-%06d.tar"), resolution=64, progress=False)
    stray = run / "latents" / "latents-000099.tar"
    stray.write_bytes(b"")
    args = ["-q", "train", shards[0], "--base", base, "--out", run, "--max-steps", "3", *FAST, "--cache-latents",
            "--record-keys", "--shuffle-buffer", "0", "--conditioning", "description", "--no-ema"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    own = {s["__key__"] for s in iter_samples(shards[:1])}
    trained = {line.split()[1] for line in (run / "keys-rank0.txt").read_text().splitlines()}
    assert trained == own                                    # 3 steps x 2 = the 6 samples of shard 0
    assert sorted(p.name for p in (run / "latents").glob("*.tar")) == ["latents-000000.tar"]

    stray.write_bytes(b"")
    before = os.stat(run / "latents" / "latents-000000.tar").st_mtime_ns
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert not stray.exists() and os.stat(run / "latents" / "latents-000000.tar").st_mtime_ns != before
