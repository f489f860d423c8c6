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


def output_paths(prompts: list[str], out: str | None, image_path: str | Path) -> list[Path]:
    """Where each prompt's image goes: `out` itself for one prompt with a file name, else
    `out/<stem>-<prompt slug>.png` (made unique)."""
    if out and len(prompts) == 1 and Path(out).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        return [Path(out)]
    if out and Path(out).suffix and not Path(out).is_dir():
        raise BadInput(f"-o {out}: several prompts need a folder, not a file")
    folder = Path(out or ".")
    stem = Path(image_path).stem
    used: set[str] = set()
    paths = []
    for prompt in prompts:
        name, n = f"{stem}-{slugify(prompt)}", 2
        while name in used:
            name, n = f"{stem}-{slugify(prompt)}-{n}", n + 1
        used.add(name)
        paths.append(folder / f"{name}.png")
    return paths


@dataclass
class GenerateOptions:
    steps: int = 100
    guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int = 0
    size: int = 256
    device: str = "auto"
    max_new_tokens: int = 1024
    greedy: bool = False
    progress: bool = True
    batch_size: int = 8               # images per pipeline call when generating many (lego evaluate --model)

    def __post_init__(self):
        if self.steps < 1:
            raise BadInput(f"--steps {self.steps}: need at least 1 denoising step (the paper uses 100)")
        if self.size < 8:
            raise BadInput(f"--size {self.size}: the model works at 8 pixels or more (the paper uses 256)")
        if self.batch_size < 1:
            raise BadInput(f"--batch-size {self.batch_size}: need at least 1")


class ActionFrameGenerator:
    """The diffusion model (and optionally the VLLM) loaded once, for many requests."""

    def __init__(self, model: str, vllm: str | None = None, options: GenerateOptions | None = None):
        import torch

        from lego_core.diffusion.build import check_model_folder, folder_conditioning, load_pipeline
        from lego_core.diffusion.conditioner import uses_image_embeds, uses_text_embeds

        if Path(model).exists():
            check_model_folder(model)
            conditioning = folder_conditioning(model)
            if not vllm and (uses_image_embeds(conditioning) or uses_text_embeds(conditioning)):
                raise BadInput(f"the model in {model} is conditioned on VLLM embeddings ({conditioning}); "
                               "pass --vllm LLAVA_DIR")
        self.options = options or GenerateOptions()
        self.device = pick_device(self.options.device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.model_name = model
        self.pipe = load_pipeline(model, device=self.device, torch_dtype=dtype)
        self.pipe.set_progress_bar_config(disable=not self.options.progress, leave=False)
        self.vllm = None
        if vllm:
            from lego_core.vllm.load import load_vllm

            self.vllm = load_vllm(vllm, device=self.device, dtype="float16" if dtype == torch.float16 else "float32")
        elif self.pipe.needs_vllm:
            raise BadInput(f"the model in {model} is conditioned on VLLM embeddings "
                           f"({self.pipe.conditioning}); pass --vllm LLAVA_DIR")

    def __call__(self, image: Image.Image, prompt: str, seed: int | None = None) -> tuple[Image.Image, str]:
        """One action frame for (image, prompt), at the input's aspect ratio, and its description."""
        import torch

        from lego_core.data.video import output_size

        if not prompt.strip():
            raise BadInput("empty prompt: say which action, e.g. \"cut onion\"")
        o = self.options
        square = image.resize((o.size, o.size), Image.Resampling.BICUBIC)
        description, h_i, h_t = prompt, None, None
        if self.vllm is not None:
            from lego_core.vllm.describe import describe_and_embed

            model, processor = self.vllm
            result = describe_and_embed(model, processor, [image], [prompt], greedy=o.greedy,
                                        max_new_tokens=o.max_new_tokens, seed=o.seed if seed is None else seed)[0]
            description = result.description
            h_i = torch.as_tensor(result.image_embeds).unsqueeze(0)
            h_t = [torch.as_tensor(result.text_embeds)]
        # A "label" model was trained on labels: it gets the prompt even when a VLLM describes the scene.
        text = prompt if self.pipe.conditioning == "label" else description
        generator = torch.Generator(device="cpu").manual_seed(o.seed if seed is None else seed)
        out = self.pipe(text, square, num_inference_steps=o.steps, guidance_scale=o.guidance,
                        image_guidance_scale=o.image_guidance, generator=generator,
                        vllm_image_embeds=h_i, vllm_text_embeds=h_t).images[0]
        return out.resize(output_size(image.width, image.height, o.size, "short"), Image.Resampling.BICUBIC), description


def save_image(image: Image.Image, path: Path) -> None:
    """Write via a temporary name so a killed run never leaves a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=(path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"))
    os.replace(tmp, path)


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
        if "/" in request["key"] or request["key"].startswith("."):
            raise BadInput(f"{path}:{n}: key {request['key']!r} cannot be a file name")
        requests.append(request)
    return requests
