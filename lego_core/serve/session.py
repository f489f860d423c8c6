"""What `lego serve` does behind the page, free of any web framework: which models to load, the
sample frames, keeping uploads, and one generation request -> images, descriptions and the
`lego generate` command that reproduces each.

Generation goes through `ActionFrameGenerator.run`, the batched path `lego generate` uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lego_core.atomic import atomic_path
from lego_core.errors import BadInput

MAX_UPLOAD_MB = 20
# The demo's model folders: the current layout first, then the one older demos wrote.
DEMO_MODELS = ("runs/lego-description-joint/model", "runs/lego/model")
DEMO_VLLM = "runs/llava/model"
NO_MODEL = ("no model to serve: pass --model DIR (a `lego train` / `lego import checkpoint` folder), "
            "or run `lego demo` first (its trained model in {demo} is then served)")


@dataclass
class Models:
    model: str
    vllm: str | None
    note: str                          # one line for the page: where the models come from


def find_models(model: str | None, vllm: str | None, demo_dir: str | Path) -> Models:
    """The models to serve: those given, else the demo's trained model (and its VLLM) in `demo_dir`."""
    if model:
        return Models(model, vllm, f"Model `{model}`" + (f", VLLM `{vllm}`" if vllm else ", no VLLM"))
    demo = Path(demo_dir)
    found = next((demo / p for p in DEMO_MODELS if (demo / p / "model_index.json").is_file()), None)
    if found is None:
        raise BadInput(NO_MODEL.format(demo=demo))
    if vllm is None and (demo / DEMO_VLLM / "config.json").is_file():
        vllm = str(demo / DEMO_VLLM)
    note = (f"The model `lego demo` trained (tiny, on the bundled sample): `{found}`"
            + (f", VLLM `{vllm}`" if vllm else ", no VLLM"))
    return Models(str(found), vllm, note)


def bundled_samples() -> list[tuple[Path, str]]:
    """The sample frames shipped inside lego_core, with the action each was recorded for."""
    folder = resources.files("lego_core") / "samples"
    labels = json.loads((folder / "samples.json").read_text())
    return [(Path(str(folder / name)), label) for name, label in sorted(labels.items())]


def shard_samples(shards: str | list[str], folder: str | Path, limit: int = 8) -> list[tuple[Path, str]]:
    """The first `limit` input frames of a shard set, written to `folder`, with their labels."""
    from lego_core.data.shards import iter_samples

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for sample in iter_samples(shards, require=("input.jpg",)):
        path = out / f"{sample['__key__']}.jpg"
        path.write_bytes(sample["input.jpg"])
        label = json.loads(sample["meta.json"]).get("label", "") if "meta.json" in sample else ""
        samples.append((path, label))
        if len(samples) == limit:
            break
    if not samples:
        raise BadInput(f"--samples {shards}: no sample with an input.jpg there")
    return samples


def keep_upload(path: str | Path, uploads: Path) -> Path:
    """The uploaded file, byte for byte, under a name made of its content hash (so the page's
    command reproduces the image exactly, and the same upload is kept once)."""
    src = Path(path)
    if src.stat().st_size > MAX_UPLOAD_MB * 1024 * 1024:
        raise BadInput(f"{src.name}: larger than {MAX_UPLOAD_MB} MB; upload a smaller frame")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    kept = uploads / f"{digest}{src.suffix.lower() or '.png'}"
    if not kept.exists():
        with atomic_path(kept) as tmp:        # two sessions uploading one frame never share a temp
            shutil.copyfile(src, tmp)
    return kept


def parse_actions(text: str) -> list[str]:
    actions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not actions:
        raise BadInput('no action: write one per line, e.g. "cut onion"')
    return actions


@dataclass
class Settings:
    steps: int
    guidance: float
    image_guidance: float
    seed: int
    num_images: int = 1


@dataclass
class Shown:
    """One action's images, its description and the command that makes them again."""

    action: str
    images: list
    seeds: list[int]
    description: str
    command: str


class ServeSession:
    """The models, loaded once; `generate` serves one request at a time (the page queues them)."""

    def __init__(self, models: Models, options=None, work_dir: str | Path = "out/serve"):
        from lego_core.diffusion.generate import ActionFrameGenerator, GenerateOptions

        self.models = models
        self.work_dir = Path(work_dir)
        self.generator = ActionFrameGenerator(models.model, models.vllm, options or GenerateOptions(progress=True))

    def defaults(self) -> Settings:
        """The page's starting values: the step count the model folder records, else the paper's."""
        o = self.generator.options
        return Settings(self.generator.steps, o.guidance, o.image_guidance, o.seed, o.num_images)

    def generate(self, frame_path: str | Path, actions_text: str, settings: Settings) -> list[Shown]:
        from lego_core.diffusion.generate import Request, load_image

        if not frame_path:
            raise BadInput("no frame: upload one or pick a sample frame")
        actions = parse_actions(actions_text)
        frame_path = keep_upload(frame_path, self.work_dir / "uploads")   # samples too: gradio hands over a copy
        frame = load_image(frame_path)
        gen = self.generator
        # The same generator serves every request with that request's settings (requests queue one by one).
        # (`replace` checks the values as `lego generate` does: a bad one is a BadInput, a message on the page)
        gen.options = dataclasses.replace(gen.options, steps=int(settings.steps), guidance=float(settings.guidance),
                                          image_guidance=float(settings.image_guidance), seed=int(settings.seed),
                                          num_images=int(settings.num_images))
        gen.steps = gen.options.steps
        return [Shown(r.prompt, r.images, r.seeds, r.description, self.command(frame_path, r.prompt))
                for r in gen.run([Request(frame, a) for a in actions])]

    def command(self, frame_path: str | Path, action: str) -> str:
        """`lego generate` with everything that decides the image, so it can be run again."""
        from lego_core.vllm.templates import INFERENCE_QUESTION

        gen, o = self.generator, self.generator.options
        args = ["lego", "generate", str(frame_path), action, "--model", gen.model_name]
        if gen.vllm_name:
            args += ["--vllm", gen.vllm_name]
            if o.greedy:
                args.append("--greedy")
            if o.question != INFERENCE_QUESTION:
                args += ["--question", o.question]
        args += ["--steps", str(gen.steps), "--size", str(gen.size), "--guidance", f"{o.guidance:g}",
                 "--image-guidance", f"{o.image_guidance:g}", "--seed", str(o.seed)]
        if o.num_images > 1:
            args += ["--num-images", str(o.num_images)]
        if o.authors_postprocess:
            args.append("--authors-postprocess")
        return shlex.join(args)
