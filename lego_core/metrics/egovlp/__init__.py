"""EgoVLP (Lin et al., NeurIPS 2022), ported for the LEGO metrics: the FrozenInTime video encoder
(space-time ViT-B/16 + projection to 256-d) and its DistilBERT text branch (`model`), and loading the
official checkpoints egovlp.pth / epic_mir_plus.pth with strict key matching (`load`).

    from lego_core.metrics.egovlp import load_egovlp
    model = load_egovlp("egovlp.pth", frames=4)           # eval mode, weights from the file
    emb = model.compute_video(clips)                      # B×4×3×224×224 → B×256

Importing this package imports torch (it is imported lazily by the metrics package).
"""

from .load import load_egovlp, official_keys, read_checkpoint, unwrap, where_published
from .model import EgoVLP, EgoVLPConfig, SpaceTimeViT

__all__ = ["EgoVLP", "EgoVLPConfig", "SpaceTimeViT", "load_egovlp", "official_keys", "read_checkpoint", "unwrap",
           "where_published"]
