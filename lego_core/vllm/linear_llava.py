"""LLaVA v1's exact model: transformers' LLaVA with ONE linear projector.

LLaVA v1 projects image features with one linear layer; transformers' LLaVA has a two-layer MLP
(linear, GELU, linear), which cannot represent it exactly. Folders `lego import vllm` makes from
such models say ``"projector_type": "linear"`` in config.json, and `vllm.load.llava_model_class`
picks this class for them. The model lives with the VLLM code (importers only convert files).
"""

from __future__ import annotations

from torch import nn
from transformers import LlavaForConditionalGeneration


class LinearProjector(nn.Module):
    """LLaVA v1's projector: one linear layer from the vision width to the LLM width."""

    def __init__(self, config):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size,
                                bias=getattr(config, "multimodal_projector_bias", True))

    def forward(self, image_features):
        return self.linear(image_features)


class LlavaLinearProjectorForConditionalGeneration(LlavaForConditionalGeneration):
    """transformers' LLaVA with LLaVA v1's single-linear projector (`"projector_type": "linear"`)."""

    def __init__(self, config):
        super().__init__(config)
        self.model.multi_modal_projector = LinearProjector(config)
        self.post_init()


__all__ = ["LinearProjector", "LlavaLinearProjectorForConditionalGeneration"]
