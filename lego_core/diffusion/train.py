"""`lego train`: the LEGO diffusion model, streamed from shards into DeepSpeed.

The recipe is the paper's (InstructPix2Pix-style), with the authors' bug fixed: σ, μ and π (the
conditioner) are trained together with the UNet; the VAE and the CLIP text encoder stay frozen.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lego_core.diffusion.build import write_model_info
from lego_core.errors import BadInput
from lego_core.engine.config import EngineOptions

log = logging.getLogger("lego.train")

DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# "finetuned ... for 20,000 iterations" (the paper, §4.1); the authors' released checkpoint was
# saved earlier, at step 9,999 (epoch 119).
PAPER_STEPS = 20_000


@dataclass
class TrainConfig:
    shards: list[str]
    out: str                                      # the run folder
    base: str = DEFAULT_BASE                      # SD-1.5 layout (the authors' start) or InstructPix2Pix
    conditioning: str = "description+joint"
    resolution: int = 256
    max_steps: int | None = None                  # optimizer steps; default: PAPER_STEPS, or --epochs
    epochs: float | None = None                   # passes over the shards, when max_steps is not given
    learning_rate: float = 1e-4                   # constant, AdamW
    weight_decay: float = 1e-2
    cfg_dropout: float = 0.05                     # text only / both / image only, 5 % each
    ema: bool = True
    ema_decay: float = 0.9999
    ema_update: str = "step"                      # "micro-batch": the authors' (4 updates a step at accum 4)
    seed: int = 0
    workers: int = 2                              # DataLoader workers per rank
    shuffle_buffer: int = 1000
    resample: bool = False
    flip: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None                     # a checkpoint folder; default: the run's latest
    overwrite: bool = False
    log_every: int = 10
    val_shards: list[str] = field(default_factory=list)
    val_every: int = 500
    val_samples: int = 4
    val_steps: int = 20
    cached_latents: bool = False
    record_keys: bool = False                     # write each rank's sample keys to RUN/keys-rank{R}.txt
    progress: bool = True
    engine: EngineOptions = field(default_factory=lambda: EngineOptions(micro_batch=32, grad_accum=4))


class Denoiser(nn.Module):
    """What DeepSpeed trains: the UNet and the conditioner, one forward from inputs to ε̂."""

    def __init__(self, unet, conditioner):
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(self, noisy, image_latents, timesteps, text_embeds, vllm_img=None, vllm_txt=None, keep_vllm=None):
        context = text_embeds
        if self.conditioner is not None and self.conditioner.needs_vllm:
            context = self.conditioner(text_embeds, vllm_img, vllm_txt, keep_vllm)
        return self.unet(torch.cat([noisy, image_latents], dim=1), timesteps,
                         encoder_hidden_states=context.to(noisy.dtype), return_dict=False)[0]


def trainable_parameters(denoiser: Denoiser) -> list[nn.Parameter]:
    """The UNet, and the conditioner parts the chosen conditioning actually uses (unused ones are
    frozen so no rank waits for a gradient that never comes)."""
    from lego_core.diffusion.conditioner import uses_image_embeds, uses_text_embeds

    params = list(denoiser.unet.parameters())
    c = denoiser.conditioner
    if c is not None:
        used = []
        if uses_image_embeds(c.config.conditioning):
            used.append(c.projection_img)
        if uses_text_embeds(c.config.conditioning):
            used += [c.projection_txt, c.self_attn_mix]
        for p in c.parameters():
            p.requires_grad_(False)
        for m in used:
            for p in m.parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def samples_per_step(cfg: TrainConfig, world_size: int) -> int:
    return cfg.engine.micro_batch * cfg.engine.grad_accum * world_size


def steps_for(cfg: TrainConfig, n_samples: int, world_size: int) -> int:
    """Optimizer steps: `max_steps`, else `epochs` over the data, else the paper's 20,000."""
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.epochs:
        return max(1, math.ceil(cfg.epochs * n_samples / samples_per_step(cfg, world_size)))
    return PAPER_STEPS


def plan_text(cfg: TrainConfig, total: int, n_samples: int, world_size: int) -> str:
    """What the run will do, said before it starts (a step count alone hides how long it is)."""
    per_step = samples_per_step(cfg, world_size)
    why = ("--max-steps" if cfg.max_steps else f"--epochs {cfg.epochs:g}" if cfg.epochs
           else "the paper's; --max-steps or --epochs to change")
    return (f"training plan: {total:,} optimizer steps ({why}) x {per_step:,} samples per step "
            f"({cfg.engine.micro_batch} per micro-batch x {cfg.engine.grad_accum} accumulated x {world_size} "
            f"rank(s)) = {total * per_step / max(n_samples, 1):,.1f} epochs of {n_samples:,} samples")


def cfg_dropout_masks(batch: int, p: float, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructPix2Pix's three-way dropout from one uniform draw: [0, p) drops the text,
    [p, 2p) both, [2p, 3p) the image. Returns (keep_text, keep_image) as 0/1 floats."""
    u = torch.rand(batch, generator=generator, device=device)
    keep_text = (u >= 2 * p).float()
    keep_image = 1 - ((u >= p) & (u < 3 * p)).float()
    return keep_text, keep_image


class DiffusionStep:
    """One micro-batch: frozen encoders, noise, dropout, ε̂ through the DeepSpeed engine, loss."""

    def __init__(self, pipe, engine, dtype, device, cfg: TrainConfig):
        from diffusers import DDPMScheduler

        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        # Noise is added the DDPM way, √ᾱ·y + √(1-ᾱ)·ε, as SD was trained and as diffusers'
        # InstructPix2Pix script does. The pipeline's sampler (Euler ancestral) adds y + σ·ε and
        # rescales only at sampling time (scale_model_input), so it must not be used here.
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.engine, self.dtype, self.device, self.cfg = engine, dtype, device, cfg
        self.null_text = self.encode_text([""])

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def latents(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        sf = self.vae.config.scaling_factor
        if "target_latent" in batch:                      # cached: Y's distribution, X's mode
            mean, logvar = batch["target_latent"].to(self.device).chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30, 20))
            y = (mean + std * torch.randn_like(mean)) * sf
            return y, batch["input_latent"].to(self.device)
        y = self.vae.encode(batch["target"].to(self.device, self.vae.dtype)).latent_dist.sample() * sf
        x = self.vae.encode(batch["input"].to(self.device, self.vae.dtype)).latent_dist.mode()
        return y, x

    def loss(self, batch: dict) -> torch.Tensor:
        y, x = self.latents(batch)
        b = y.shape[0]
        noise = torch.randn_like(y)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=self.device).long()
        noisy = self.scheduler.add_noise(y, noise, t)
        text = self.encode_text(batch["text"])
        keep_text, keep_image = cfg_dropout_masks(b, self.cfg.cfg_dropout, None, self.device)
        text = torch.where(keep_text.view(-1, 1, 1) > 0, text, self.null_text.expand_as(text))
        x = x * keep_image.view(-1, 1, 1, 1)
        vllm_img = batch["vllm_img"].to(self.device, self.dtype) if "vllm_img" in batch else None
        vllm_txt = [h.to(self.device, self.dtype) for h in batch["vllm_txt"]] if "vllm_txt" in batch else None
        pred = self.engine(noisy.to(self.dtype), x.to(self.dtype), t, text.to(self.dtype), vllm_img, vllm_txt,
                           keep_text.to(self.dtype))
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(y, noise, t)
        else:
            target = noise
        return nn.functional.mse_loss(pred.float(), target.float())


def train(cfg: TrainConfig) -> Path | None:
    """Run (or resume) training; returns the exported model folder (on rank 0; None elsewhere)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    from lego_core.data.shards import expand_shards, read_keys
    from lego_core.device import looks_local
    from lego_core.diffusion.data import check_shards_have
    from lego_core.engine.launch import detect_launch, init_distributed, shutdown

    # Every check of the user's input before DeepSpeed starts or the run folder is made.
    if cfg.ema_update not in ("step", "micro-batch"):
        raise BadInput(f"ema_update {cfg.ema_update!r}: use 'step' or 'micro-batch'")
    if looks_local(cfg.base) and not Path(cfg.base).is_dir():
        raise BadInput(f"--base {cfg.base}: no such folder (an SD-1.5 or InstructPix2Pix diffusers folder, or a hub id)")
    urls = expand_shards(cfg.shards)
    first = check_shards_have(urls, cfg.conditioning, cfg.cached_latents)
    n_samples = len(read_keys(urls))
    run = Path(cfg.out)
    dist_env = detect_launch()
    device, _ = init_distributed(dist_env)
    rank, world = dist_env.rank, dist_env.world_size
    try:
        return _train(cfg, urls, first, run, rank, world, device, n_samples)
    finally:
        shutdown()


def _train(cfg, urls, first, run, rank, world, device, n_samples: int) -> Path:
    import deepspeed
    from diffusers.training_utils import EMAModel

    from lego_core.data.shards import SkipStats, make_dataset
    from lego_core.diffusion.build import build_from_pretrained, quiet_loading
    from lego_core.diffusion.data import DecodeSample, DecodeStage, collate, flip_batch, required_fields, vllm_width_of
    from lego_core.engine import checkpoint as ckpt
    from lego_core.engine.config import engine_config, precision_dtype
    from lego_core.engine.logger import RunLogger
    from lego_core.engine.stream import batch_stream

    ckpt_dir = run / "checkpoints"
    resume_from = ckpt.start_run(run, rank=rank, overwrite=cfg.overwrite, resume=cfg.resume,
                                 outputs=("checkpoints", "model", "log.jsonl", "tensorboard", "samples"))

    torch.manual_seed(cfg.seed + rank)
    quiet_loading()
    pipe = build_from_pretrained(cfg.base, conditioning=cfg.conditioning, vllm=vllm_width_of(first) or 5120)
    for frozen in (pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
    denoiser = Denoiser(pipe.unet, pipe.conditioner)
    params = trainable_parameters(denoiser)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)     # constant, as the paper
    ds_config = engine_config(cfg.engine, world)     # a --deepspeed file's batch / accumulation win
    if cfg.engine.offload_optimizer:
        ds_config["zero_force_ds_cpu_optimizer"] = False
    engine, _, _, _ = deepspeed.initialize(model=denoiser, optimizer=optimizer, lr_scheduler=lr_sched,
                                           config=ds_config, model_parameters=params)
    dtype = precision_dtype(ds_config)
    pipe.vae.to(device)
    pipe.text_encoder.to(device)
    zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
    ema = EMAModel(ema_inputs(params, zero3), decay=cfg.ema_decay) if cfg.ema else None
    ema_file = f"ema-rank{rank}.pt" if zero3 else "ema.pt"  # ZeRO-3: each rank averages its own partition

    total = steps_for(cfg, n_samples, world)
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0}
    if resume_from is not None:
        state.update(ckpt.load_checkpoint(engine, resume_from, rank=rank))
        if ema is not None:
            _load_ema(ema, resume_from / ema_file)
    start = int(state["step"])
    logger = RunLogger(run, enabled=rank == 0, total_steps=total, start_step=start, progress=cfg.progress,
                       every=cfg.log_every)
    if rank == 0:
        log.info(plan_text(cfg, total, n_samples, world))
        (run / "train-config.json").write_text(json.dumps(
            {**asdict(cfg), "resolved": {"world_size": world, "total_steps": total, "samples": n_samples,
                                          "deepspeed": ds_config}}, indent=1, default=str))
        logger.event("resume" if resume_from else "start", step=start, total_steps=total, world_size=world,
                     checkpoint=str(resume_from) if resume_from else None)

    stats = SkipStats()
    dataset = make_dataset(urls, shuffle=cfg.shuffle_buffer, resample=cfg.resample, seed=cfg.seed,
                           require=required_fields(cfg.conditioning, cfg.cached_latents), stats=stats)
    dataset.append(DecodeStage(DecodeSample(cfg.conditioning, cfg.resolution, cached_latents=cfg.cached_latents)))

    def loader():
        return torch.utils.data.DataLoader(dataset, batch_size=cfg.engine.micro_batch, num_workers=cfg.workers,
                                           collate_fn=collate, drop_last=True,
                                           multiprocessing_context="spawn" if cfg.workers else None)

    step_fn = DiffusionStep(pipe, engine, dtype, device, cfg)
    batches = batch_stream(dataset, loader, int(state["epoch"]), int(state["batches_in_epoch"]))
    step, t0, samples = start, time.perf_counter(), 0
    keys_out = open(run / f"keys-rank{rank}.txt", "a", encoding="utf-8") if cfg.record_keys else None
    engine.train()
    while step < total:
        loss_sum = 0.0
        for _ in range(cfg.engine.grad_accum):
            epoch, in_epoch, batch = next(batches)
            if cfg.flip:
                batch = flip_batch(batch, cfg.seed, epoch)
            loss = step_fn.loss(batch)
            engine.backward(loss)
            engine.step()
            if ema is not None and cfg.ema_update == "micro-batch":
                ema.step(ema_inputs(params, zero3))
            loss_sum += loss.item() / cfg.engine.grad_accum
            samples += len(batch["text"])
            if keys_out is not None:
                keys_out.write("".join(f"{step + 1} {k}\n" for k in batch["key"]))
        step += 1
        if ema is not None and cfg.ema_update == "step":
            ema.step(ema_inputs(params, zero3))
        elapsed = time.perf_counter() - t0
        logger.step(step, loss=loss_sum, lr=lr_sched.get_last_lr()[0], samples_per_s=samples * world / max(elapsed, 1e-9),
                    epoch=epoch)
        if cfg.val_shards and step % cfg.val_every == 0:
            _validate(cfg, step_fn, pipe, engine, run, step, logger, rank, zero3)
        if step % cfg.checkpoint_every == 0 or step == total:
            extra = {ema_file: ema.state_dict()} if ema is not None else None
            ckpt.save_checkpoint(engine, ckpt_dir, step, {}, position={"epoch": epoch, "batches_in_epoch": in_epoch},
                                 rank=rank, keep=cfg.keep_checkpoints, extra=extra, every_rank=zero3)
            logger.event("checkpoint", step=step)
    if keys_out is not None:
        keys_out.close()
    if stats.total and rank == 0:
        log.warning("skipped %s", stats.summary())
    info = {"resolution": cfg.resolution, "validation_steps": cfg.val_steps, "conditioning": cfg.conditioning,
            "training_steps": step}
    out = _export(pipe, denoiser, engine, params, ema, run / "model", rank, zero3, info)
    logger.event("done", step=step, steps_run=step - start, model=str(out))
    logger.close()
    return out if rank == 0 else None


def ema_targets(params, zero3: bool) -> list:
    """The tensors holding this rank's current weights: the parameters, or under ZeRO-3 each one's
    partition (`ds_tensor`, which the optimizer updates, then gathers from)."""
    return [p.ds_tensor for p in params] if zero3 else list(params)


def ema_inputs(params, zero3: bool) -> list:
    """`ema_targets` as fp32 views for diffusers' EMAModel, which averages only tensors that
    require grad and *copies* the others: a detached copy would make the "EMA" the raw weights."""
    return [t.detach().float().requires_grad_() for t in ema_targets(params, zero3)]


def _load_ema(ema, path: Path) -> None:
    """Restore the EMA from a checkpoint; start it afresh (with a warning) if it is missing or its
    shapes differ (e.g. a ZeRO-3 run resumed with another number of ranks)."""
    if not path.is_file():
        log.warning("%s: no EMA in this checkpoint; the EMA restarts from the current weights", path.parent.name)
        return
    from lego_core.engine.checkpoint import load_trusted_tensors

    state = load_trusted_tensors(path, "the EMA")
    if state is None:
        log.warning("%s: the EMA restarts from the current weights", path.parent.name)
        return
    saved = state.get("shadow_params", [])
    if len(saved) != len(ema.shadow_params) or any(a.shape != b.shape for a, b in zip(saved, ema.shadow_params)):
        log.warning("%s: its EMA does not fit this run (another world size under ZeRO-3?); the EMA restarts "
                    "from the current weights", path)
        return
    ema.load_state_dict(state)


def _export(pipe, denoiser, engine, params, ema, folder: Path, rank: int, zero3: bool, info: dict) -> Path:
    """The final (EMA) weights as a LegoPipeline folder that `lego generate` loads, with `info`
    (resolution, validation steps) in its lego.json so generation defaults to them."""
    import deepspeed
    import torch.distributed as dist
    from diffusers import EulerAncestralDiscreteScheduler

    if ema is not None:
        ema.copy_to(ema_targets(params, zero3))
        if zero3:  # "persistent" small parameters stay gathered; release them so the gather below reads the EMA
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            for p in params:
                if p.ds_status == ZeroParamStatus.AVAILABLE:
                    p.partition()
    gather = deepspeed.zero.GatheredParameters(list(denoiser.parameters()), modifier_rank=None) if zero3 else _null()
    with gather:
        if rank == 0:
            pipe.unet, pipe.conditioner = denoiser.unet, denoiser.conditioner
            for part in (pipe.unet, pipe.conditioner):
                if part is not None and part.dtype != torch.float32:
                    part.to(torch.float32)
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
            save_replacing(pipe, folder, info)
    if dist.is_initialized():
        dist.barrier()
    return folder


def save_replacing(pipe, folder: Path, info: dict) -> None:
    """`pipe.save_pretrained` (and `lego.json`) into `folder.partial`, emptied first (a killed
    export's files must not end up in the model), then swapped in for `folder`."""
    import shutil

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    write_model_info(tmp, **info)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@torch.no_grad()
def _validate(cfg, step_fn, pipe, engine, run, step, logger, rank, zero3):
    """Validation loss on fixed noise, and a grid (input | generated | target) of a few samples."""
    from lego_core.data.shards import iter_samples
    from lego_core.diffusion.data import DecodeSample, collate, required_fields

    decode = DecodeSample(cfg.conditioning, cfg.resolution, cached_latents=cfg.cached_latents)
    samples = [decode(s) for _, s in zip(range(cfg.val_samples), iter_samples(
        cfg.val_shards, require=required_fields(cfg.conditioning, cfg.cached_latents)))]
    if not samples:
        return
    batch = collate(samples)
    engine.eval()  # no dropout in the loss or the samples
    try:
        # Fixed noise for a comparable loss, without touching the training RNG on any device.
        with torch.random.fork_rng(devices=[step_fn.device] if torch.device(step_fn.device).type == "cuda" else []):
            torch.manual_seed(1234)
            val_loss = step_fn.loss(batch).item()
        logger.event("validation", step=step, val_loss=val_loss)
        if rank == 0 and not zero3 and not cfg.cached_latents:
            _sample_grid(cfg, pipe, engine.module, samples, run, step, logger)
    finally:
        engine.train()


def _sample_grid(cfg, pipe, module, samples, run, step, logger):
    """input | generated | target for the validation samples, saved under RUN/samples/."""
    from PIL import Image

    from lego_core.diffusion.pipeline import LegoPipeline

    gen = LegoPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=module.unet,
                       scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config),
                       conditioner=module.conditioner)
    gen.set_progress_bar_config(disable=True)
    rows = []
    for i, s in enumerate(samples):
        to_pil = lambda t: Image.fromarray(((t.permute(1, 2, 0).float().numpy() + 1) * 127.5).clip(0, 255).astype("uint8"))
        x = to_pil(s["input"])
        kw = {}
        if "vllm_img" in s:
            kw["vllm_image_embeds"] = s["vllm_img"][None].to(module.unet.dtype)
        if "vllm_txt" in s:
            kw["vllm_text_embeds"] = [s["vllm_txt"].to(module.unet.dtype)]
        out = gen(s["text"], x, num_inference_steps=cfg.val_steps, generator=torch.Generator().manual_seed(i), **kw).images[0]
        rows.append([x, out, to_pil(s["target"])])
    r = cfg.resolution
    grid = Image.new("RGB", (3 * r, len(rows) * r))
    for j, row in enumerate(rows):
        for k, im in enumerate(row):
            grid.paste(im.resize((r, r)), (k * r, j * r))
    path = run / "samples" / f"step-{step:08d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, quality=90)
    logger.event("samples", step=step, path=str(path))
    logger.image("samples", path, step)
