"""LegoConditioner: the cross-attention context C = [ψ(R), σ(H_i), π(μ(H_t))].

ψ(R) is the frozen CLIP text embedding of the description R (77 rows, computed by the pipeline's
text encoder). σ and μ map the VLLM's image embedding H_i and text embedding H_t from the VLLM
width to the UNet's cross-attention width; π is two transformer encoder layers over μ(H_t).
Module names follow the authors' release (projection_img, projection_txt, self_attn_mix), so
their checkpoints load by name; their σ/μ/π were never trained (never given to the optimizer),
ours are.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

CONDITIONINGS = ("label", "description", "description+image", "description+text", "description+joint")


def feedforward_width(cross_attention_dim: int) -> int:
    """π's feed-forward width: the authors' (PyTorch's default 2048) at SD-1.5's 768 and above;
    four times the width below, so a tiny UNet's conditioner is not a 2048-wide MLP over 77 rows
    (at width 32 that MLP and its dropout took a third of each training step)."""
    return 2048 if cross_attention_dim >= 512 else 4 * cross_attention_dim


def uses_image_embeds(conditioning: str) -> bool:
    return conditioning in ("description+image", "description+joint")


def uses_text_embeds(conditioning: str) -> bool:
    return conditioning in ("description+text", "description+joint")


class LegoConditioner(ModelMixin, ConfigMixin):
    """Builds the UNet's cross-attention context from ψ(R) and the VLLM embeddings.

    `conditioning` selects the paper's variants: "label" and "description" use ψ(R) only (C is the
    77 CLIP rows, exactly InstructPix2Pix); "+image" appends σ(H_i) (M rows), "+text" appends
    π(μ(H_t)) (77 rows), "+joint" both.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        vllm_dim: int = 5120,
        cross_attention_dim: int = 768,
        conditioning: str = "description+joint",
        max_text_tokens: int = 77,
        num_layers: int = 2,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, not {conditioning!r}")
        self.projection_img = nn.Linear(vllm_dim, cross_attention_dim)   # σ
        self.projection_txt = nn.Linear(vllm_dim, cross_attention_dim)   # μ
        layer = nn.TransformerEncoderLayer(                               # π, as the authors built it
            d_model=cross_attention_dim, nhead=num_heads, dim_feedforward=dim_feedforward, dropout=dropout,
            norm_first=True, batch_first=True,
        )
        self.self_attn_mix = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier (uniform) weights and zero biases for σ, μ *and* π, as the paper says. The
        authors' code kept PyTorch's defaults, where nn.TransformerEncoder deep-copies one layer,
        so π's two layers would start identical; here each matrix is drawn on its own. LayerNorm
        scales stay 1."""
        for linear in (self.projection_img, self.projection_txt):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        for name, p in self.self_attn_mix.named_parameters():
            if p.dim() > 1:                         # attention in/out projections, the feed-forward
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def needs_vllm(self) -> bool:
        return uses_image_embeds(self.config.conditioning) or uses_text_embeds(self.config.conditioning)

    def pad_text_embeds(self, text_embeds: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """H_t of each sample padded with zeros or truncated to `max_text_tokens` rows: (B, 77, D)."""
        n = self.config.max_text_tokens
        out = torch.zeros(len(text_embeds), n, self.config.vllm_dim, dtype=self.dtype, device=self.device)
        for i, h in enumerate(text_embeds):
            h = torch.as_tensor(h)[:n]
            out[i, : h.shape[0]] = h.to(out)
        return out

    def forward(
        self,
        text_embeds: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        vllm_text_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        keep_vllm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """C for a batch. `text_embeds` is ψ(R): (B, 77, cross_attention_dim). `keep_vllm` (B,) of
        0/1 zeroes the VLLM rows of the samples whose text is dropped — after σ and π∘μ, so no bias
        leaks into the "no text" branch (the authors' choice; zeroing the inputs would not)."""
        parts = [text_embeds]
        conditioning = self.config.conditioning
        batch = text_embeds.shape[0]
        vllm_rows = []
        if uses_image_embeds(conditioning):
            if image_embeds is None:
                raise ValueError(f"conditioning {conditioning!r} needs the VLLM image embedding")
            vllm_rows.append(self.projection_img(torch.as_tensor(image_embeds).to(self.dtype)))
        if uses_text_embeds(conditioning):
            if vllm_text_embeds is None:
                raise ValueError(f"conditioning {conditioning!r} needs the VLLM text embedding")
            vllm_rows.append(self.self_attn_mix(self.projection_txt(self.pad_text_embeds(vllm_text_embeds))))
        for rows in vllm_rows:
            if rows.shape[0] != batch:
                raise ValueError(f"batch of {batch} prompts but {rows.shape[0]} VLLM embeddings")
            if keep_vllm is not None:
                rows = rows * keep_vllm.to(rows).view(-1, 1, 1)
            parts.append(rows.to(text_embeds.dtype))
        return torch.cat(parts, dim=1)
