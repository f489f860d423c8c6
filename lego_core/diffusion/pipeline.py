"""LegoPipeline: InstructPix2Pix-style image editing conditioned on VLLM embeddings.

Components are named as in diffusers' StableDiffusionInstructPix2PixPipeline (vae, text_encoder,
tokenizer, unet, scheduler) plus `conditioner`. Without a conditioner, or with the "label" /
"description" conditioning, it computes exactly what InstructPix2Pix computes (a test holds it
to 1e-5). Three-way classifier-free guidance runs as one batched UNet call:

    ε = ε(∅,∅) + s_T·(ε(X,C) − ε(X,∅)) + s_I·(ε(X,∅) − ε(∅,∅))

where "∅ text" is the empty prompt AND the VLLM rows of C zeroed after projection, and "∅ image"
is a zero image latent.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from lego_core.diffusion.conditioner import LegoConditioner


class LegoPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->conditioner->unet->vae"
    _optional_components = ["conditioner"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        conditioner: LegoConditioner | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, conditioner=conditioner)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # -- what the model needs ---------------------------------------------------------------------

    @property
    def conditioning(self) -> str:
        return self.conditioner.config.conditioning if self.conditioner is not None else "description"

    @property
    def needs_vllm(self) -> bool:
        return self.conditioner is not None and self.conditioner.needs_vllm

    # -- pieces shared with training ---------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """ψ(R): the CLIP text encoder's last hidden state, (B, 77, D)."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self._execution_device))[0]

    def build_context(self, text_embeds: torch.Tensor, image_embeds=None, vllm_text_embeds=None,
                      keep_vllm: torch.Tensor | None = None) -> torch.Tensor:
        """C = [ψ(R), σ(H_i), π(μ(H_t))] (just ψ(R) when the model uses no VLLM embeddings)."""
        if not self.needs_vllm:
            return text_embeds
        if image_embeds is not None:
            image_embeds = torch.as_tensor(image_embeds).to(self._execution_device)
        return self.conditioner(text_embeds, image_embeds, vllm_text_embeds, keep_vllm)

    @torch.no_grad()
    def encode_image_latents(self, image: torch.Tensor) -> torch.Tensor:
        """The VAE latent of X: the distribution's mode, unscaled, as InstructPix2Pix trains it."""
        return self.vae.encode(image.to(self._execution_device, self.vae.dtype)).latent_dist.mode()

    # -- generation --------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: PipelineImageInput,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        vllm_image_embeds: torch.Tensor | list | None = None,
        vllm_text_embeds: torch.Tensor | list | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        eta: float = 0.0,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        device = self._execution_device
        if self.needs_vllm and (
            (self.conditioner.config.conditioning in ("description+image", "description+joint")
             and vllm_image_embeds is None)
            or (self.conditioner.config.conditioning in ("description+text", "description+joint")
                and vllm_text_embeds is None)
        ):
            raise ValueError(f"this model ({self.conditioning} conditioning) needs vllm_image_embeds/vllm_text_embeds")
        # The 3-way formula holds for any scales; only s_T = s_I = 1 reduces it to ε(X, C). (diffusers'
        # InstructPix2Pix also drops guidance when s_T <= 1 or s_I < 1, silently ignoring the other scale.)
        cfg = not (guidance_scale == 1.0 and image_guidance_scale == 1.0)

        # 1. Context: [cond, ∅ text, ∅ text] like InstructPix2Pix's prompt_embeds ordering, in the
        # UNet's dtype (a bf16 UNet and conditioner with an fp32 text encoder, as in bf16 training).
        dtype = self.unet.dtype
        text = self.encode_text(prompts).to(dtype)
        context = self.build_context(text, vllm_image_embeds, vllm_text_embeds)
        if cfg:
            null_text = self.encode_text([""] * batch).to(dtype)
            zero = torch.zeros(batch, device=device)
            null_context = self.build_context(null_text, vllm_image_embeds, vllm_text_embeds, keep_vllm=zero)
            context = torch.cat([context, null_context, null_context])

        # 2. Image latents: [X, X, 0].
        pixels = self.image_processor.preprocess(image)
        if pixels.shape[0] == 1 and batch > 1:
            pixels = pixels.repeat(batch, 1, 1, 1)
        if pixels.shape[0] != batch:
            raise ValueError(f"{batch} prompts but {pixels.shape[0]} images: give one image, or one per prompt")
        image_latents = self.encode_image_latents(pixels).to(context.dtype)
        if cfg:
            image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])

        # 3. Noise and schedule.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, self.vae.config.latent_channels, *image_latents.shape[-2:])
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=context.dtype)
        latents = latents.to(device, context.dtype) * self.scheduler.init_noise_sigma
        extra = self.prepare_extra_step_kwargs(generator, eta)

        # 4. Denoise.
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                model_in = torch.cat([latents] * 3) if cfg else latents
                model_in = torch.cat([self.scheduler.scale_model_input(model_in, t), image_latents], dim=1)
                noise = self.unet(model_in, t, encoder_hidden_states=context, return_dict=False)[0]
                if cfg:
                    e_text, e_image, e_uncond = noise.chunk(3)
                    noise = (e_uncond + guidance_scale * (e_text - e_image)
                             + image_guidance_scale * (e_image - e_uncond))
                latents = self.scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, t, {"latents": latents, "context": context})
                bar.update()

        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype),
                                      return_dict=False)[0]
            # "raw": the VAE's output as it is (nominally [-1, 1], not clamped), for one's own post-processing
            images = (decoded if output_type == "raw"
                      else self.image_processor.postprocess(decoded, output_type=output_type))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def prepare_extra_step_kwargs(self, generator, eta):
        """eta and generator only for schedulers whose step() takes them (as diffusers does)."""
        import inspect

        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra
