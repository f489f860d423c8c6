"""LPIPS through the `lpips` package (SqueezeNet by default; AlexNet and VGG16 as the authors also
reported), images in [-1, 1] as LPIPS expects.

The package's linear layers ship inside it; the backbone is torchvision's ImageNet checkpoint,
which `lpips` would download. We never download: the backbone comes from torch.hub's cache
($TORCH_HOME/hub/checkpoints/squeezenet1_1-b8a52dc0.pth etc., where torchvision puts it) or from
`--lpips-weights FILE` (a torchvision state dict of that network), and is loaded into
`lpips.LPIPS(pnet_rand=True)`'s backbone key by key — the same network `lpips.LPIPS(net=...)` builds.

`authors_range=True` feeds [0, 1] images instead, as the LEGO authors' evaluation did by mistake;
use it only to reproduce their published LPIPS numbers.
"""

from __future__ import annotations

from .common import Batch, Metric, find_weights

BACKBONES = {
    # net: (torchvision checkpoint file name, its download URL)
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


def load_lpips(net: str = "squeeze", weights: str | None = None, device: str = "cpu"):
    """An `lpips.LPIPS` model (eval, no grad) with its backbone loaded from `weights` or the torch cache."""
    import contextlib
    import io
    import warnings

    import lpips
    import torch

    from lego_core.errors import BadInput

    if net not in BACKBONES:
        raise BadInput(f"--lpips-net {net}: want one of {', '.join(BACKBONES)}")
    filename, url = BACKBONES[net]
    path = find_weights(weights, filename, f"LPIPS ({net}) backbone", "--lpips-weights", url)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's 'pretrained is deprecated', from inside lpips
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise BadInput(f"LPIPS ({net}) backbone: cannot read {path} ({type(e).__name__}); "
                       "pass --lpips-weights FILE") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # lpips splits torchvision's `features` Sequential into slices whose children keep their index:
    # net.sliceK.{i}.rest  <->  features.{i}.rest
    mapped = {}
    for name, _ in list(model.net.named_parameters()) + list(model.net.named_buffers()):
        _, idx, rest = name.split(".", 2)
        src = f"features.{idx}.{rest}"
        if src not in state:
            raise BadInput(f"LPIPS ({net}) backbone: {path} has no {src}; is it torchvision's {filename}?")
        mapped[name] = state[src]
    model.net.load_state_dict(mapped, strict=True)
    return model.to(device).eval().requires_grad_(False)


def input_affine(model, authors_range: bool = False):
    """(scale, offset), each 1×3×1×1, such that `uint8 * scale + offset` is what lpips' backbone
    sees: [0, 255] → [-1, 1] (or [0, 1] with `authors_range`), then lpips' ScalingLayer
    ((x - shift) / scale). One fused pass over the images instead of five."""
    lo, hi = (0.0, 1.0) if authors_range else (-1.0, 1.0)
    shift, scale = model.scaling_layer.shift.float(), model.scaling_layer.scale.float()
    return ((hi - lo) / 255.0 / scale), ((lo - shift) / scale)


def lpips_distance(model, x, n: int):
    """`model(a, b)` (lpips v0.1, lpips=True, spatial=False) for `x = cat([a, b])` already through
    `input_affine`, computed faster: one backbone pass over both halves, and each layer's 1×1
    linear layer applied after the spatial mean (it is linear and bias-free, so mean(w·d) = w·mean(d))
    instead of on the full feature map. Equal to lpips' own forward up to float rounding (tests
    hold it to 1e-5)."""
    import torch

    feats = model.net.forward(x)
    total = torch.zeros(n, dtype=torch.float32, device=x.device)
    for k, f in enumerate(feats):
        f = f.permute(0, 2, 3, 1).flatten(1, 2)  # B x pixels x C: a view for channels_last maps
        inv = (torch.linalg.vector_norm(f, dim=2, keepdim=True) + 1e-10).reciprocal_()  # lpips.normalize_tensor
        d = (f[:n] * inv[:n]).addcmul_(f[n:], inv[n:], value=-1)
        conv = [m for m in model.lins[k].modules() if isinstance(m, torch.nn.Conv2d)][-1]
        total += (d.square_() @ conv.weight.view(-1).to(d.dtype)).mean(1)
    return total


def pairs_per_chunk(device, height: int, width: int, n: int) -> int:
    """How many pairs go through the backbone at once. A GPU takes them all; on a CPU, small chunks
    keep the first layers' activations in cache: at 256², 2 pairs ran 1.3–1.6× faster than 8 or
    more (`scripts/bench/evaluate.py`), and larger images get fewer."""
    if str(device).startswith("cuda"):
        return n
    return max(1, (2 * 256 * 256) // (height * width))


def map_one_thread_each(fn, items: list) -> list:
    """`[fn(x) for x in items]` on CPU: one Python thread per torch thread, each running torch
    single-threaded. SqueezeNet's convolutions on a few small images split poorly across OpenMP
    threads (measured 0.72 s vs 0.67–1.13 s for 128 images at 256² on 2 cores, the slow case the
    common one next to the image-decoding threads); whole chunks per thread do not."""
    import torch

    threads = torch.get_num_threads()
    workers = min(threads, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(fn, items))
    finally:
        # set_num_threads acts per thread for OpenMP/MKL, but also sets the default that threads
        # started later inherit: put that back.
        torch.set_num_threads(threads)


class LPIPS(Metric):
    name = "lpips"
    columns = ("lpips",)
    higher_is_better = {"lpips": False}

    def __init__(self, net: str = "squeeze", weights: str | None = None, authors_range: bool = False,
                 device: str = "cpu"):
        self.net, self.weights, self.authors_range, self.device = net, weights, authors_range, device
        self.model = load_lpips(net, weights, device)
        self.scale, self.offset = (t.to(device) for t in input_affine(self.model, authors_range))

    def update(self, batch: Batch) -> dict[str, list]:
        chunks = []  # (indices, generated, reference), uint8
        for idx, gen, ref in batch.size_groups():
            step = pairs_per_chunk(self.device, gen.shape[2], gen.shape[3], len(idx))
            chunks += [(idx[i:i + step], gen[i:i + step], ref[i:i + step]) for i in range(0, len(idx), step)]
        on_cpu = str(self.device).startswith("cpu")
        values = map_one_thread_each(self._distances, chunks) if on_cpu else [self._distances(c) for c in chunks]
        out = [0.0] * len(batch)
        for (idx, _, _), vals in zip(chunks, values):
            for i, v in zip(idx, vals):
                out[i] = v
        return {"lpips": out}

    def _distances(self, chunk) -> list[float]:
        import torch

        _, gen, ref = chunk
        with torch.inference_mode():  # per thread
            x = torch.cat([gen, ref]).to(self.device)
            x = torch.addcmul(self.offset, x, self.scale)  # uint8 → the backbone's input, one pass
            x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU
            return lpips_distance(self.model, x, len(gen)).tolist()

    def settings(self) -> dict:
        return {"net": self.net, "input_range": "[0, 1] (authors' range)" if self.authors_range else "[-1, 1]",
                "weights": self.weights or "torch cache"}
