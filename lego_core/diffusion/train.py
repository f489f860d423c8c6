"""`lego train`: the LEGO diffusion model, streamed from shards into DeepSpeed.

The recipe is the paper's (InstructPix2Pix-style), with the authors' bug fixed: σ, μ and π (the
conditioner) are trained together with the UNet; the VAE and the CLIP text encoder stay frozen.
The EMA and the export are `diffusion.export`, validation `diffusion.validation`; the loop itself
(resume, checkpoints, logging) is `engine.loop`'s.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lego_core.diffusion.export import ema_inputs, export_pipeline, load_ema
from lego_core.diffusion.validation import validate
from lego_core.errors import BadInput
from lego_core.engine.config import EngineOptions
from lego_core.engine.loop import Recipe, run_training

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
    snr_gamma: float | None = None                # Min-SNR loss weighting (Hang et al. 2023);
                                                  # None: the paper's plain MSE
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


def cfg_dropout_masks(batch: int, p: float, generator: torch.Generator | None,
                      device) -> tuple[torch.Tensor, torch.Tensor]:
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
        v_prediction = self.scheduler.config.prediction_type == "v_prediction"
        target = self.scheduler.get_velocity(y, noise, t) if v_prediction else noise
        if self.cfg.snr_gamma is None:
            return nn.functional.mse_loss(pred.float(), target.float())
        return (min_snr_weights(self.scheduler, t, self.cfg.snr_gamma, v_prediction)
                * (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))).mean()


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-γ per-sample loss weights, min(SNR, γ) / SNR for ε (÷ (SNR + 1) for v), as diffusers'
    training scripts compute them: the nearly noise-free timesteps, easy and many, stop dominating."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    return snr.clamp(max=gamma) / (snr + 1 if v_prediction else snr)


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
        raise BadInput(f"--base {cfg.base}: no such folder (an SD-1.5 or InstructPix2Pix "
                       "diffusers folder, or a hub id)")
    urls = expand_shards(cfg.shards)
    first = check_shards_have(urls, cfg.conditioning, cfg.cached_latents)
    n_samples = len(read_keys(urls))
    run = Path(cfg.out)
    dist_env = detect_launch()
    device, _ = init_distributed(dist_env)
    rank, world = dist_env.rank, dist_env.world_size
    try:
        return run_training(DiffusionRecipe(cfg, urls, first, run, rank, world, device), n_samples)
    finally:
        shutdown()


class DiffusionRecipe(Recipe):
    """`lego train` in the shared loop: the UNet and conditioner trained with the L2 noise loss,
    the VAE and text encoder frozen, an optional EMA, validation and a diffusers pipeline export."""

    outputs = ("checkpoints", "model", "log.jsonl", "tensorboard", "samples")
    finished_marker = "model_index.json"

    def __init__(self, cfg: TrainConfig, urls, first, run: Path, rank: int, world: int, device):
        super().__init__(cfg, run, rank, world, device)
        self.urls, self.first = urls, first
        self.ema = self.keys_out = None

    def total_steps(self, n_samples: int) -> int:
        return steps_for(self.cfg, n_samples, self.world)

    def build(self, ds_config: dict, total: int):
        from lego_core.diffusion.build import build_from_pretrained, quiet_loading
        from lego_core.diffusion.data import vllm_width_of
        from lego_core.engine.optim import adamw

        cfg = self.cfg
        quiet_loading()
        self.pipe = build_from_pretrained(cfg.base, conditioning=cfg.conditioning,
                                          vllm=vllm_width_of(self.first) or 5120)
        for frozen in (self.pipe.vae, self.pipe.text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        self.denoiser = Denoiser(self.pipe.unet, self.pipe.conditioner)
        self.params = trainable_parameters(self.denoiser)
        optimizer = adamw(self.params, "cpu" if cfg.engine.offload_optimizer else self.device,
                          lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)     # constant, as the paper
        if cfg.engine.offload_optimizer:
            ds_config["zero_force_ds_cpu_optimizer"] = False
        return self.denoiser, optimizer, lr_sched, self.params

    def ready(self, engine, ds_config: dict) -> None:
        from diffusers.training_utils import EMAModel

        from lego_core.engine.config import precision_dtype

        cfg, rank = self.cfg, self.rank
        self.engine = engine
        self.pipe.vae.to(self.device)
        self.pipe.text_encoder.to(self.device)
        self.zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        self.ema = EMAModel(ema_inputs(self.params, self.zero3), decay=cfg.ema_decay) if cfg.ema else None
        self.ema_file = f"ema-rank{rank}.pt" if self.zero3 else "ema.pt"  # ZeRO-3: each rank its own partition
        self.step_fn = DiffusionStep(self.pipe, engine, precision_dtype(ds_config), self.device, cfg)
        if cfg.record_keys:
            self.keys_out = open(self.run / f"keys-rank{rank}.txt", "a", encoding="utf-8")

    def resume(self, checkpoint: Path) -> None:
        if self.ema is not None:
            load_ema(self.ema, checkpoint / self.ema_file)

    def announce(self, total: int, n_samples: int) -> None:
        log.info(plan_text(self.cfg, total, n_samples, self.world))

    def dataset(self, stats):
        from lego_core.data.shards import make_dataset
        from lego_core.diffusion.data import DecodeSample, DecodeStage, collate, required_fields

        cfg = self.cfg
        dataset = make_dataset(self.urls, shuffle=cfg.shuffle_buffer, resample=cfg.resample, seed=cfg.seed,
                               require=required_fields(cfg.conditioning, cfg.cached_latents), stats=stats)
        dataset.append(DecodeStage(DecodeSample(cfg.conditioning, cfg.resolution, cached_latents=cfg.cached_latents)))
        return dataset, collate

    def next_batch(self, batches):
        from lego_core.diffusion.data import flip_batch

        epoch, in_epoch, batch = next(batches)
        if self.cfg.flip:
            batch = flip_batch(batch, self.cfg.seed, epoch)
        return epoch, in_epoch, batch

    def micro_step(self, engine, batch, step: int):
        if self.keys_out is not None:
            self.keys_out.write("".join(f"{step + 1} {k}\n" for k in batch["key"]))
        return self.step_fn.loss(batch), len(batch["text"])

    def after_micro_step(self) -> None:
        if self.ema is not None and self.cfg.ema_update == "micro-batch":
            self.ema.step(ema_inputs(self.params, self.zero3))

    def after_step(self, engine, step: int, logger) -> None:
        cfg = self.cfg
        if self.ema is not None and cfg.ema_update == "step":
            self.ema.step(ema_inputs(self.params, self.zero3))
        if cfg.val_shards and step % cfg.val_every == 0:
            validate(cfg, self.step_fn, self.pipe, engine, self.run, step, logger, self.rank, self.zero3)

    def checkpoint_extra(self):
        return ({self.ema_file: self.ema.state_dict()} if self.ema is not None else None), self.zero3

    def export(self, engine, folder: Path, step: int) -> Path:
        cfg = self.cfg
        info = {"resolution": cfg.resolution, "validation_steps": cfg.val_steps, "conditioning": cfg.conditioning,
                "training_steps": step}
        return export_pipeline(self.pipe, self.denoiser, engine, self.params, self.ema, folder, self.rank, self.zero3,
                               info)

    def close(self) -> None:
        if self.keys_out is not None:
            self.keys_out.close()
            self.keys_out = None


