"""PSNR, as the authors compute it: images in [0, 1] (data range 1), one value per image, then the mean.

PSNR = 10·log10(1 / MSE) over all pixels and channels of one image. Identical images would give
+inf; the MSE is floored at 1e-10, so they score 100 dB and the mean stays finite.
"""

from __future__ import annotations

from .common import Batch, Metric

MSE_FLOOR = 1e-10


def psnr(generated, reference):
    """Per-image PSNR of uint8 or [0,1] float tensors B×C×H×W (float64 inside) → B-vector."""
    import torch

    if generated.dtype == torch.uint8:
        # |a - b| stays in uint8 (max - min); its squares, summed in float64, are exact to 1e-16
        # and 5x faster than widening both images to int32 first.
        d = (torch.maximum(generated, reference) - torch.minimum(generated, reference)).flatten(1).float()
        sse = torch.linalg.vector_norm(d, dim=1, dtype=torch.float64).square()
        mse = sse / (d.shape[1] * 255.0 ** 2)
    else:
        mse = ((generated.double() - reference.double()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


class PSNR(Metric):
    name = "psnr"
    columns = ("psnr",)
    higher_is_better = {"psnr": True}

    def update(self, batch: Batch) -> dict[str, list]:
        out = [0.0] * len(batch)
        for idx, gen, ref in batch.size_groups():
            for i, v in zip(idx, psnr(gen, ref).tolist()):
                out[i] = v
        return {"psnr": out}

    def settings(self) -> dict:
        return {"data_range": 1.0, "reduction": "per image, then mean"}
