"""`lego generate`: an input frame + action prompts -> action frames (and the VLLM's description).

The model works at `size`×`size`; the result is resized back to the input's aspect ratio. With a
VLLM, the VLLM first describes how to do the action in this scene, and its image/text embeddings
condition the model (the paper's answer is the image plus that description).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lego_core.device import pick_device
from lego_core.errors import BadInput

MODEL_ENV = "LEGO_MODEL"


def resolve_model(model: str | None) -> str:
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise BadInput(f"no model: pass --model DIR or set {MODEL_ENV}; make one with `lego train` "
                       "(or `lego import checkpoint` for the authors' weights)")
    return model


def load_image(path: str | Path) -> Image.Image:
    """Any file PIL reads — RGBA, grayscale, palette, CMYK, EXIF-rotated — as upright RGB."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except FileNotFoundError:
        raise BadInput(f"image not found: {path}") from None
    except Image.DecompressionBombError as e:       # not an OSError: it would be a crash (exit 1)
        raise BadInput(f"image {path} is too large to open safely: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInput(f"cannot read image {path}: {e}") from None
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def slugify(text: str, max_len: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "action"


def numbered(path: Path, num_images: int) -> list[Path]:
    """One image: `path` itself (evaluate matches it by key); N images: `{stem}-{i}{suffix}`, i = 0 … N−1
    (the image of seed + i)."""
    if num_images == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(num_images)]


def output_paths(prompts: list[str], out: str | None, image_path: str | Path, num_images: int = 1,
                 suffix: str = ".png") -> list[list[Path]]:
    """Where each prompt's images go: `out` itself for one prompt with a file name, else
    `out/<stem>-<prompt slug>{suffix}` (made unique); with N images each, those names plus `-{i}`.
    `suffix` ".jpg" (the authors' post-processing) takes only a JPEG name for `out`."""
    if out and len(prompts) == 1 and Path(out).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        if suffix == ".jpg" and Path(out).suffix.lower() not in (".jpg", ".jpeg"):
            raise BadInput(f"-o {out}: --authors-postprocess writes JPEG files as the authors did; "
                           f"name it {Path(out).stem}.jpg or give a folder")
        return [numbered(Path(out), num_images)]
    if out and Path(out).suffix and not Path(out).is_dir():
        raise BadInput(f"-o {out}: several prompts need a folder, not a file")
    folder = Path(out or ".")
    stem = Path(image_path).stem
    used: set[Path] = set()
    paths = []
    for prompt in prompts:
        name, n = f"{stem}-{slugify(prompt)}", 2
        while used & set(numbered(folder / f"{name}{suffix}", num_images)):
            name, n = f"{stem}-{slugify(prompt)}-{n}", n + 1
        files = numbered(folder / f"{name}{suffix}", num_images)
        used.update(files)
        paths.append(files)
    return paths


def save_image(image: Image.Image, path: Path) -> None:
    """Write via a temporary name so a killed run never leaves a half-written image."""
    from lego_core.atomic import atomic_path

    with atomic_path(path) as tmp:          # the pid in the temp name: two runs writing one folder never collide
        image.save(tmp, format=(path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"))


def read_batch_file(path: str | Path) -> list[dict]:
    """`--batch FILE.jsonl`: one {"key": ..., "image": ..., "prompt": ...} per line."""
    requests = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BadInput(f"cannot read batch file {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            request = {"key": str(obj["key"]), "image": str(obj["image"]), "prompt": str(obj["prompt"])}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BadInput(f"{path}:{n}: expected {{\"key\": ..., \"image\": ..., \"prompt\": ...}} ({e})") from None
        if not request["key"].strip() or "/" in request["key"] or request["key"].startswith("."):
            raise BadInput(f"{path}:{n}: key {request['key']!r} cannot be a file name")
        requests.append(request)
    return requests


@dataclass
class GenerateOptions:
    steps: int | None = None          # None: the validation step count the model folder records, else 100
    guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int = 0
    size: int | None = None           # None: the resolution the model was trained at, else 256
    device: str = "auto"
    max_new_tokens: int = 1024
    greedy: bool = False
    progress: bool = True
    batch_size: int = 8               # images per UNet call (each runs three guidance branches)
    num_images: int = 1               # images per request, seeds seed … seed + N − 1
    dtype: str = "auto"               # the diffusion model's: auto (fp16 on a GPU, else fp32) | fp32 | fp16 | bf16
    offload: str | None = None        # None | "model" | "sequential" (diffusers' CPU offload, GPU only)
    vllm_dtype: str = "auto"
    vllm_quantize: str | None = None  # None | "4bit" | "8bit" (bitsandbytes, GPU only)
    question: str | None = None       # the VLLM's question, "{}" for the action; None: the authors'
    authors_postprocess: bool = False # the authors' min-max stretch, uint8, JPEG (what their metrics scored)

    def __post_init__(self):
        from lego_core.vllm.templates import question_template

        self.question = question_template(self.question)          # a template without a place for the action: exit 2
        if self.steps is not None and self.steps < 1:
            raise BadInput(f"--steps {self.steps}: need at least 1 denoising step (the paper uses 100)")
        if self.size is not None and self.size < 8:
            raise BadInput(f"--size {self.size}: the model works at 8 pixels or more (the paper uses 256)")
        if self.batch_size < 1:
            raise BadInput(f"--batch-size {self.batch_size}: need at least 1")
        if self.num_images < 1:
            raise BadInput(f"--num-images {self.num_images}: need at least 1")

    @property
    def suffix(self) -> str:
        """The generated files' extension: the authors' post-processing saved JPEGs."""
        return ".jpg" if self.authors_postprocess else ".png"


def authors_postprocess(decoded, width: int, height: int) -> Image.Image:
    """The authors' post-processing (metrics/inference.py), which their PSNR / LPIPS / FID scored: the
    decoded image as it is (not clamped) resized bicubically to `width`×`height`, then
    (x − min) / (max − min) · 255 with min and max over the whole image (all channels), truncated to
    uint8. (Saved as JPEG at PIL's default quality, 75, by `save_image`.)"""
    import numpy as np
    import torch

    x = torch.nn.functional.interpolate(decoded[None].float().cpu(), size=(height, width), mode="bicubic",
                                        align_corners=False)[0]
    span = x.max() - x.min()
    x = (x - x.min()) / span * 255 if span > 0 else torch.zeros_like(x)      # a flat image: theirs would be NaN
    return Image.fromarray(x.permute(1, 2, 0).numpy().astype(np.uint8))


@dataclass
class Request:
    """One action to show in one frame. A `description` (and, for models that use them, the VLLM
    embeddings H_i / H_t) given here are used as they are; what is missing the VLLM computes."""

    image: Image.Image
    prompt: str                       # the action, e.g. "cut onion"
    key: str | None = None
    seed: int | None = None           # None: the options' seed
    description: str | None = None
    image_embeds: object = None       # H_i, (M, D) array or tensor
    text_embeds: object = None        # H_t, (n, D)
    question_action: str | None = None   # the action as the VLLM's question words it, when not `prompt`
                                         # cleaned (an imported sample's authors' wording, "cut the onion")


@dataclass
class Generated:
    request: Request
    images: list                      # PIL images at the input's aspect ratio, one per seed
    seeds: list[int]
    description: str                  # the VLLM's (or the given) description; the prompt without one
    question: str | None = None       # what the VLLM was asked, when it described this request

    @property
    def prompt(self) -> str:
        return self.request.prompt

    @property
    def key(self) -> str | None:
        return self.request.key


class ActionFrameGenerator:
    """The diffusion model (and optionally the VLLM) loaded once, for many requests, batched.

        gen = ActionFrameGenerator("runs/lego/model", vllm="runs/llava")
        for result in gen.generate(Image.open("frame.jpg"), ["cut onion", "open fridge"]):
            result.images[0].save(...); print(result.description)

    `keep_vllm=False` (a one-shot run): the VLLM is loaded when first needed and freed once it has
    described, before the diffusion model goes to the device, so both never share its memory.
    `embeddings_given=True`: the requests carry H_i/H_t (from `lego enrich`d shards), so a model
    that uses them needs no `vllm`.
    """

    def __init__(self, model: str, vllm: str | None = None, options: GenerateOptions | None = None, *,
                 keep_vllm: bool = True, embeddings_given: bool = False):
        from lego_core.diffusion import memory
        from lego_core.diffusion.build import check_model_folder, folder_conditioning, load_pipeline, read_model_info
        from lego_core.diffusion.conditioner import uses_image_embeds, uses_text_embeds

        o = self.options = options or GenerateOptions()
        self.device = pick_device(o.device)
        dtype = memory.torch_dtype(o.dtype, self.device)         # every GPU-only option fails here, before loading
        memory.check_offload(o.offload, self.device)
        self._vllm_dtype = memory.dtype_name(o.vllm_dtype, self.device, "--vllm-dtype") if vllm else None
        self._quantization = memory.quantization_config(o.vllm_quantize, self.device) if vllm else None
        info = {}
        if Path(model).exists():
            check_model_folder(model)
            conditioning = folder_conditioning(model)
            if not vllm and not embeddings_given and (uses_image_embeds(conditioning)
                                                      or uses_text_embeds(conditioning)):
                raise BadInput(f"the model in {model} is conditioned on VLLM embeddings ({conditioning}); "
                               "pass --vllm LLAVA_DIR")
            info = read_model_info(model)
        self.steps = o.steps or int(info.get("validation_steps") or 100)
        self.size = o.size or int(info.get("resolution") or 256)
        if vllm:
            from lego_core.vllm.load import load_config

            load_config(vllm)                                      # a wrong folder fails now, not after loading
        self.model_name, self.vllm_name, self.keep_vllm = model, vllm, keep_vllm
        # On the CPU first: the device gets it once the VLLM (when freed) has made room.
        self.pipe = load_pipeline(model, device="cpu", torch_dtype=dtype)
        self.pipe.set_progress_bar_config(disable=not o.progress, leave=False)
        self._placed = False
        self.vllm = None
        if vllm and keep_vllm:
            self.vllm = self._load_vllm()
        elif not vllm and not embeddings_given and self.pipe.needs_vllm:
            raise BadInput(f"the model in {model} is conditioned on VLLM embeddings "
                           f"({self.pipe.conditioning}); pass --vllm LLAVA_DIR")
        if keep_vllm:
            self._place()                                          # both stay loaded: ready for the first request

    @property
    def conditioning(self) -> str:
        return self.pipe.conditioning

    # -- the Python API ---------------------------------------------------------------------------

    def generate(self, image: Image.Image, prompts: str | list[str], seed: int | None = None) -> list[Generated]:
        """Action frames for one frame and one or several actions (options.num_images each)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return list(self.run([Request(image, p, seed=seed) for p in prompts]))

    def __call__(self, image: Image.Image, prompt: str, seed: int | None = None) -> tuple[Image.Image, str]:
        """One action frame for (image, prompt) and its description."""
        result = self.generate(image, prompt, seed)[0]
        return result.images[0], result.description

    def run(self, requests):
        """Yield one `Generated` per request, in order, each as soon as its images are done: first
        the VLLM describes (in batches) the requests that need it, then the UNet denoises up to
        `batch_size` images at once, each with its own seeded generator, so an image does not
        depend on the batching (up to float rounding)."""
        requests = list(requests)
        for r in requests:
            if not r.prompt or not r.prompt.strip():
                raise BadInput(f"{r.key + ': ' if r.key else ''}empty prompt: say which action, e.g. \"cut onion\"")
        conditions = self._describe(requests)
        if not self.keep_vllm:
            self.release_vllm()
        self._place()
        o = self.options
        jobs = [(i, (o.seed if r.seed is None else r.seed) + k) for i, r in enumerate(requests)
                for k in range(o.num_images)]
        images: dict[int, list] = {}
        for start in range(0, len(jobs), o.batch_size):
            chunk = jobs[start:start + o.batch_size]
            outs = self._diffuse([requests[i] for i, _ in chunk], [conditions[i] for i, _ in chunk],
                                 [s for _, s in chunk])
            for (i, _), im in zip(chunk, outs):
                images.setdefault(i, []).append(im)
                if len(images[i]) == o.num_images:
                    seed = o.seed if requests[i].seed is None else requests[i].seed
                    yield Generated(requests[i], images.pop(i), list(range(seed, seed + o.num_images)),
                                    conditions[i][0], conditions[i][3])

    def release_vllm(self) -> None:
        """Free the VLLM's memory (it is loaded again if a later request needs it)."""
        if self.vllm is not None:
            from lego_core.diffusion.memory import release_memory

            self.vllm = None
            release_memory()

    # -- the steps --------------------------------------------------------------------------------

    def _load_vllm(self):
        from lego_core.vllm.load import load_vllm

        return load_vllm(self.vllm_name, device=self.device, dtype=self._vllm_dtype,
                         quantization_config=self._quantization)

    def _needs_vllm(self, r: Request) -> bool:
        """A request needs the VLLM for embeddings the model uses and lacks, or (when a VLLM is
        given) for a description it lacks."""
        from lego_core.diffusion.conditioner import uses_image_embeds, uses_text_embeds

        c = self.conditioning
        if (uses_image_embeds(c) and r.image_embeds is None) or (uses_text_embeds(c) and r.text_embeds is None):
            return True
        return r.description is None and self.vllm_name is not None

    def _describe(self, requests: list[Request]) -> list[tuple]:
        """(description, H_i, H_t, question asked) per request; the VLLM runs, batched, for those
        lacking them."""
        conditions = [(r.description or r.prompt, r.image_embeds, r.text_embeds, None) for r in requests]
        todo = [i for i, r in enumerate(requests) if self._needs_vllm(r)]
        if not todo:
            return conditions
        if self.vllm_name is None:
            r = requests[todo[0]]
            raise BadInput(f"{r.key or r.prompt}: the model uses VLLM embeddings ({self.conditioning}) and this "
                           "request has none: pass --vllm DIR (for shards: run `lego enrich` first)")
        from lego_core.vllm.describe import describe_and_embed
        from lego_core.vllm.templates import inference_question

        self.vllm = self.vllm or self._load_vllm()
        o = self.options
        asked = [requests[i] for i in todo]
        outs = describe_and_embed(*self.vllm, [r.image for r in asked], [r.prompt for r in asked],
                                  greedy=o.greedy, max_new_tokens=o.max_new_tokens, seed=o.seed,
                                  batch_size=o.batch_size, questions=[
                                      inference_question(r.prompt, o.question, action=r.question_action)
                                      for r in asked])
        for i, out in zip(todo, outs):
            conditions[i] = (out.description, out.image_embeds, out.text_embeds, out.question)
        return conditions

    def _place(self) -> None:
        if not self._placed:
            from lego_core.diffusion.memory import place_pipeline

            place_pipeline(self.pipe, self.device, self.options.offload)
            self._placed = True

    def _diffuse(self, requests: list[Request], conditions: list[tuple], seeds: list[int]) -> list[Image.Image]:
        """One UNet batch: an image per (request, seed), resized back to the request's aspect ratio."""
        import torch

        from lego_core.data.resize import output_size
        from lego_core.diffusion.conditioner import uses_image_embeds, uses_text_embeds

        size = self.size
        # A "label" model was trained on labels: it gets the prompt even when a VLLM describes the scene.
        texts = [r.prompt if self.conditioning == "label" else c[0] for r, c in zip(requests, conditions)]
        h_i = h_t = None
        if uses_image_embeds(self.conditioning):
            h_i = torch.stack([torch.as_tensor(c[1]).float() for c in conditions])
        if uses_text_embeds(self.conditioning):
            h_t = [torch.as_tensor(c[2]).float() for c in conditions]
        squares = [r.image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for r in requests]
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        raw = self.options.authors_postprocess
        images = self.pipe(texts, squares, num_inference_steps=self.steps, guidance_scale=self.options.guidance,
                           image_guidance_scale=self.options.image_guidance, generator=generators,
                           vllm_image_embeds=h_i, vllm_text_embeds=h_t, output_type="raw" if raw else "pil").images
        sizes = [output_size(r.image.width, r.image.height, size, "short") for r in requests]
        if raw:
            return [authors_postprocess(x, w, h) for x, (w, h) in zip(images, sizes)]
        return [im.resize(wh, Image.Resampling.BICUBIC) for im, wh in zip(images, sizes)]
