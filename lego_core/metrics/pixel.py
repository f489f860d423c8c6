"""PSNR, as the authors compute it, and PSNR over the region the action changed.

`psnr`: images in [0, 1] (data range 1), one value per image, then the mean. PSNR = 10·log10(1 / MSE)
over all pixels and channels of one image. Identical images would give +inf; the MSE is floored at
1e-10, so they score 100 dB and the mean stays finite.

`psnr_changed` / `psnr_unchanged` (not in the paper): whole-frame PSNR is dominated by the pixels
the action leaves alone, so copying the input frame scores well. These split the frame by what the
action changed: a pixel is *changed* when |ground truth − input| (mean over RGB, 0–1 scale) exceeds
0.1. Everything is computed at the ground truth's size (prediction and input frame resized to it,
bicubic); the MSE is the mean over the region's pixels × 3 channels, with the same floor. A sample
whose changed region covers under 0.5 % of the pixels has no `psnr_changed` (too few pixels to say
anything; counted as excluded), and one whose unchanged region is empty has no `psnr_unchanged`.
`changed_psnr(prediction, input, reference)` scores any prediction — the generated frame, the input
frame itself (the do-nothing baseline) or a VAE round-trip of the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import Batch, Metric, resize_to

MSE_FLOOR = 1e-10
CHANGE_THRESHOLD = 0.1  # |ground truth − input|, mean over RGB, 0–1 scale
MIN_CHANGED_FRACTION = 0.005  # psnr_changed needs a changed region of at least 0.5 % of the pixels


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


# --- PSNR over the changed / unchanged region ----------------------------------------------------


def _size(im) -> tuple[int, int]:
    """(width, height) of a PIL image or an H×W×3 array."""
    return im.size if hasattr(im, "convert") else (im.shape[1], im.shape[0])


def unit_rgb(im, size: tuple[int, int] | None = None):
    """A PIL image, an H×W×3 uint8 array or an H×W×3 float array in [0, 1] → H×W×3 float64 in [0, 1],
    resized bicubic to `size` (width, height) first when given and different (PIL's bicubic, as the
    evaluator resizes generated images; a float array is resized channel by channel in float)."""
    import numpy as np
    from PIL import Image

    if hasattr(im, "convert"):
        return np.asarray(resize_to(im.convert("RGB"), size or im.size), np.float64) / 255.0
    a = np.asarray(im)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"want an H×W×3 image, got an array of shape {a.shape}")
    if a.dtype == np.uint8:
        return unit_rgb(Image.fromarray(a), size)
    a = np.asarray(a, np.float64)  # no copy when already float64
    if size is not None and tuple(size) != _size(a):
        a = np.stack([np.asarray(Image.fromarray(a[..., c].astype(np.float32), "F").resize(tuple(size), Image.BICUBIC))
                      for c in range(3)], -1).astype(np.float64)
    return a


def changed_region(input, reference, threshold: float = CHANGE_THRESHOLD):
    """H×W bool mask (the reference's size) of the pixels the action changed: |reference − input|,
    mean over RGB on the 0–1 scale, above `threshold`. The input frame is resized to the reference."""
    ref = unit_rgb(reference)
    x = unit_rgb(input, _size(reference))
    return abs(ref - x).mean(-1) > threshold


def masked_psnr(prediction, reference, mask) -> float | None:
    """PSNR over the pixels where `mask` is true (all three channels); None for an empty mask.
    `prediction` is resized bicubic to the reference's size."""
    import numpy as np

    count = int(np.count_nonzero(mask))
    if not count:
        return None
    err = (unit_rgb(prediction, _size(reference)) - unit_rgb(reference))[mask]  # count × 3
    mse = float(np.square(err).sum()) / (count * 3)
    return float(10.0 * np.log10(1.0 / max(mse, MSE_FLOOR)))


@dataclass
class ChangedPSNRValues:
    changed: float | None  # None: changed region under min_changed of the pixels (excluded)
    unchanged: float | None  # None: no unchanged pixel at all
    changed_fraction: float  # of the reference's pixels


def changed_psnr(prediction, input, reference, threshold: float = CHANGE_THRESHOLD,
                 min_changed: float = MIN_CHANGED_FRACTION, mask=None) -> ChangedPSNRValues:
    """psnr_changed and psnr_unchanged of `prediction` for the (input, reference) pair.

        changed_psnr(generated, x, y)   # the model
        changed_psnr(x, x, y)           # the do-nothing baseline: the input frame itself
        changed_psnr(vae_roundtrip, x, y)

    Images: PIL, H×W×3 uint8 or float [0, 1] arrays; everything is compared at the reference's size.
    `mask`: a precomputed `changed_region(input, reference, threshold)` to score several predictions
    of one sample without recomputing it."""
    m = changed_region(input, reference, threshold) if mask is None else mask
    fraction = float(m.mean())
    return ChangedPSNRValues(changed=masked_psnr(prediction, reference, m) if fraction >= min_changed else None,
                             unchanged=masked_psnr(prediction, reference, ~m), changed_fraction=fraction)


class ChangedPSNR(Metric):
    """`--metrics psnr_changed`: psnr_changed / psnr_unchanged of the generated frame and, as the
    baseline beside it, of the input frame itself (input_psnr_*); per sample, then the mean over
    the samples that have a value. Set-level: the fraction of samples where the generated frame
    beats the input frame on psnr_changed. Samples without an input frame get no values."""

    name = "psnr_changed"
    columns = ("psnr_changed", "psnr_unchanged", "input_psnr_changed", "input_psnr_unchanged")
    set_columns = ("psnr_changed_beats_input",)
    higher_is_better = {c: True for c in (*columns, *set_columns)}
    needs_input = True

    def __init__(self, threshold: float = CHANGE_THRESHOLD, min_changed: float = MIN_CHANGED_FRACTION):
        self.threshold, self.min_changed = threshold, min_changed
        self.start(())

    def start(self, keys) -> None:
        self.small_change = 0  # samples left out of psnr_changed
        self.no_unchanged = 0  # samples left out of psnr_unchanged
        self.no_input = 0
        self.wins: list[bool] = []

    def update(self, batch: Batch) -> dict[str, list]:
        out: dict[str, list] = {c: [None] * len(batch) for c in self.columns}
        inputs = batch.inputs or [None] * len(batch)
        for i, (gen, ref, x) in enumerate(zip(batch.generated, batch.reference, inputs)):
            if x is None:
                self.no_input += 1
                continue
            # Each image to float at the ground truth's size once, then two predictions share the mask.
            y, x, gen = unit_rgb(ref), unit_rgb(x, ref.size), unit_rgb(gen, ref.size)
            mask = changed_region(x, y, self.threshold)
            g = changed_psnr(gen, x, y, self.threshold, self.min_changed, mask=mask)
            b = changed_psnr(x, x, y, self.threshold, self.min_changed, mask=mask)
            for col, v in zip(self.columns, (g.changed, g.unchanged, b.changed, b.unchanged)):
                out[col][i] = v
            self.small_change += g.changed is None
            self.no_unchanged += g.unchanged is None
            if g.changed is not None:
                self.wins.append(g.changed > b.changed)
        return out

    def finish(self) -> dict[str, dict]:
        """The exclusion counts join the per-image columns' entries in metrics.json."""
        changed = {"excluded": self.small_change, "no_input": self.no_input}
        unchanged = {"excluded": self.no_unchanged, "no_input": self.no_input}
        n = len(self.wins)
        return {"psnr_changed": changed, "input_psnr_changed": changed,
                "psnr_unchanged": unchanged, "input_psnr_unchanged": unchanged,
                "psnr_changed_beats_input": {"value": sum(self.wins) / n if n else None, "n": n}}

    def settings(self) -> dict:
        return {"changed_pixel": f"|ground truth - input| (mean over RGB, 0-1) > {self.threshold}",
                "size": "the ground truth's (generated and input frames resized bicubic)",
                "mse": "over the region's pixels x 3 channels; floored at 1e-10 (100 dB)",
                "psnr_changed_excluded_if": f"changed region < {self.min_changed:.1%} of the pixels",
                "psnr_unchanged_excluded_if": "no unchanged pixel",
                "beats_input": "generated psnr_changed > the input frame's, over the samples with a psnr_changed",
                "reduction": "per image, then mean"}
