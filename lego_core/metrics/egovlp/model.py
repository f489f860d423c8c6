"""EgoVLP's FrozenInTime model (Lin et al., NeurIPS 2022; Bain et al., ICCV 2021), the parts the
LEGO metrics need, written from the architecture of showlab/EgoVLP (model/model.py,
model/video_transformer.py) so that its checkpoints load with strict key matching.

- `SpaceTimeViT` — the video encoder ("SpaceTimeTransformer"): a ViT-B/16 at 224 px whose blocks
  each run a temporal attention then a spatial attention ("divided space-time attention", the
  frozen-in-time variant), with one learned positional embedding per patch position shared across
  frames plus one learned temporal embedding per frame; the CLS token attends to every token, the
  patch tokens to the CLS token and to the tokens of their own frame (spatial) or their own patch
  position (temporal). Output: the final LayerNorm'd CLS token (768-d).
- `EgoVLP` — the whole FrozenInTime module: `video_model` (the above), `text_model` (a
  transformers `DistilBertModel`, distilbert-base-uncased's architecture), `vid_proj`
  (Linear 768 → 256) and `txt_proj` (ReLU then Linear 768 → 256). Its `state_dict()` keys and
  shapes are those of the official checkpoints (after their `module.` prefix is removed).

Two quirks of the original are kept on purpose, since the weights were trained with them: the
spatial attention's residual is added to the block's *input* (the temporal attention's output only
feeds the spatial attention), and the queries are scaled before the CLS token is split off.

`EgoVLPConfig` describes the architecture; `EgoVLPConfig.from_state_dict` reads it off a state dict
(widths, depths, patch and image size, frames from the shapes; heads = width / 64, as in ViT-B/16 and
DistilBERT-base), so the official checkpoints and the tiny test ones build through the same code.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64


def distilbert_base_uncased() -> dict:
    """The text model's configuration in the official checkpoints (distilbert-base-uncased)."""
    return {"vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
            "max_position_embeddings": 512}


@dataclass
class EgoVLPConfig:
    """FrozenInTime at the authors' settings by default: SpaceTimeTransformer base_patch16_224
    (16 frames of temporal embedding, as both official checkpoints were trained with), projection
    "minimal" to 256-d, distilbert-base-uncased."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 16
    projection_dim: int = 256
    text: dict | None = field(default_factory=distilbert_base_uncased)  # DistilBertConfig kwargs; None: no text branch

    @classmethod
    def from_state_dict(cls, sd) -> "EgoVLPConfig":
        """The architecture a FrozenInTime state dict (no `module.` prefix) was saved from."""
        def shape(k):
            if k not in sd:
                raise KeyError(k)
            return tuple(sd[k].shape)

        dim = shape("video_model.cls_token")[-1]
        patch = shape("video_model.patch_embed.proj.weight")[-1]
        n_pos = shape("video_model.pos_embed")[1] - 1
        side = math.isqrt(n_pos)
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"video_model\.blocks\.(\d+)\.", k))}
        depth = max(blocks) + 1 if blocks else 0
        text = None
        if "text_model.embeddings.word_embeddings.weight" in sd:
            vocab, tdim = shape("text_model.embeddings.word_embeddings.weight")
            layers = {int(m.group(1)) for k in sd if (m := re.match(r"text_model\.transformer\.layer\.(\d+)\.", k))}
            text = {"vocab_size": vocab, "dim": tdim, "n_layers": max(layers) + 1 if layers else 0,
                    "n_heads": max(1, tdim // HEAD_DIM),
                    "hidden_dim": shape("text_model.transformer.layer.0.ffn.lin1.weight")[0] if layers else 4 * tdim,
                    "max_position_embeddings": shape("text_model.embeddings.position_embeddings.weight")[0]}
        return cls(img_size=side * patch, patch_size=patch, embed_dim=dim, depth=depth,
                   num_heads=max(1, dim // HEAD_DIM),
                   mlp_ratio=shape("video_model.blocks.0.mlp.fc1.weight")[0] / dim if depth else 4.0,
                   num_frames=shape("video_model.temporal_embed")[1],
                   projection_dim=shape("vid_proj.0.weight")[0], text=text)

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbed(nn.Module):
    """Each frame cut into patch_size² patches, each linearly embedded (a strided conv)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):  # B×T×C×H×W → B×(T·N)×D, frame-major
        b, t, c, h, w = x.shape
        y = self.proj(x.reshape(b * t, c, h, w))  # (B·T)×D×h×w
        return y.flatten(2).transpose(1, 2).reshape(b, -1, y.shape[1])


class Attention(nn.Module):
    """Multi-head self-attention restricted to groups of patch tokens (one frame, or one patch
    position across frames), the CLS token being a key/value of every group and attending to all."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, frames: int, patches: int, over: str):
        b, n, d = x.shape
        h = self.num_heads
        hd = d // h
        # B×L×3D → 3 × (B·h)×L×hd (batch-major, then heads)
        q, k, v = (t.reshape(b, n, h, hd).transpose(1, 2).reshape(b * h, n, hd)
                   for t in self.qkv(x).chunk(3, dim=-1))
        cls_out = F.scaled_dot_product_attention(q[:, :1], k, v, scale=self.scale)

        def group(t):  # (B·h)×(T·N)×hd → (B·h·G)×S×hd
            t = t.reshape(b * h, frames, patches, hd)
            if over == "time":
                t = t.transpose(1, 2)  # one group per patch position, its T frames in order
            return t.reshape(-1, t.shape[2], hd)

        qg, kg, vg = group(q[:, 1:]), group(k[:, 1:]), group(v[:, 1:])
        r = qg.shape[0] // (b * h)
        kg = torch.cat([k[:, :1].repeat_interleave(r, 0), kg], dim=1)
        vg = torch.cat([v[:, :1].repeat_interleave(r, 0), vg], dim=1)
        out = F.scaled_dot_product_attention(qg, kg, vg, scale=self.scale)  # (B·h·G)×S×hd
        if over == "time":
            out = out.reshape(b * h, patches, frames, hd).transpose(1, 2)
        out = out.reshape(b * h, frames * patches, hd)
        out = torch.cat([cls_out, out], dim=1)
        out = out.reshape(b, h, n, hd).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Temporal attention (norm3, timeattn), then spatial attention (norm1, attn) on the temporal
    residual, added to the block input; then the MLP (norm2, mlp)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.timeattn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, frames: int, patches: int):
        t = x + self.timeattn(self.norm3(x), frames, patches, "time")
        x = x + self.attn(self.norm1(t), frames, patches, "space")
        return x + self.mlp(self.norm2(x))


class SpaceTimeViT(nn.Module):
    """The video encoder; input B×T×3×S×S (T ≤ num_frames, ImageNet-normalised), output B×D."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_frames: int = 16):
        super().__init__()
        self.img_size, self.patch_size, self.num_frames, self.embed_dim = img_size, patch_size, num_frames, embed_dim
        self.patches_per_frame = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, embed_dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, video):
        b, t = video.shape[:2]
        if t > self.num_frames:
            raise ValueError(f"{t} frames given; this model has temporal embeddings for {self.num_frames}")
        if tuple(video.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"frames of {tuple(video.shape[-2:])} given; this model takes "
                             f"{self.img_size}×{self.img_size}")
        n = self.patches_per_frame
        x = self.patch_embed(video)
        # Patch position p of frame f: pos_embed[1 + p] + temporal_embed[f]; the CLS token: pos_embed[0].
        pos = self.pos_embed[:, 1:].unsqueeze(1) + self.temporal_embed[:, :t].unsqueeze(2)  # 1×T×N×D
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1), x + pos.reshape(1, t * n, -1)],
                      dim=1)
        for blk in self.blocks:
            x = blk(x, t, n)
        return self.norm(x)[:, 0]


class EgoVLP(nn.Module):
    """FrozenInTime: video and text encoders and their projections into the joint 256-d space.
    Submodule names are the checkpoints' (text_model, video_model, txt_proj, vid_proj)."""

    def __init__(self, config: EgoVLPConfig | None = None):
        super().__init__()
        self.config = config = config or EgoVLPConfig()
        if config.text is not None:
            from transformers import DistilBertConfig, DistilBertModel

            tcfg = DistilBertConfig(**config.text)
            self.text_model = DistilBertModel(tcfg)
        self.video_model = SpaceTimeViT(config.img_size, config.patch_size, config.embed_dim, config.depth,
                                        config.num_heads, config.mlp_ratio, config.num_frames)
        if config.text is not None:
            self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(config.text["dim"], config.projection_dim))
        self.vid_proj = nn.Sequential(nn.Linear(config.embed_dim, config.projection_dim))

    @property
    def has_text(self) -> bool:
        return self.config.text is not None

    def compute_video(self, video):
        """B×T×3×S×S → B×256 (not normalised)."""
        return self.vid_proj(self.video_model(video))

    def compute_text(self, input_ids, attention_mask=None):
        """Token ids → B×256 (not normalised): the text model's first ([CLS]) hidden state, projected."""
        if not self.has_text:
            raise ValueError("this EgoVLP model was built without its text branch")
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.txt_proj(hidden[:, 0])
