"""`lego generate` from Python: requests -> image files, written and reported as the command does.

    gen = ActionFrameGenerator(model, vllm, options, keep_vllm=False)
    written = generate_prompts(gen, load_image("frame.jpg"), ["cut onion"], [[Path("onion.png")]])
    summary = generate_batch(gen, read_batch_file("requests.jsonl"), "generated/")

Each image is saved atomically (`save_image`) as soon as its batch is denoised, and described by
one record (output, prompt, description, seed, steps, size, model, key, question): the lines
`lego generate --json` prints. In a batch a bad request (an unreadable image, an empty prompt, a
key given twice) is skipped and counted, never fatal, and a request whose images all exist is
not redone unless `overwrite`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from lego_core.diffusion.generate import Request, load_image, numbered, save_image
from lego_core.errors import BadInput

# Called with (the records of one request's images, its `Generated` result) as each is written.
OnWritten = Callable[[list, object], None]


@dataclass
class BatchSummary:
    """What `generate_batch` did: the records of the images written, the requests skipped
    (key, reason) and how many already had their images."""

    records: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_done: int = 0

    def lines(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} request(s); first: {self.skipped[0][0]}: {self.skipped[0][1]}")
        if self.already_done:
            out.append(f"{self.already_done} request(s) already had an image (use --overwrite to redo them)")
        return out


def image_records(generator, files: list[Path], result) -> list[dict]:
    """One record per image of `result` saved at `files`: what `lego generate --json` prints."""
    return [{"output": str(path), "prompt": result.prompt, "description": result.description, "seed": seed,
             "steps": generator.steps, "size": generator.size, "model": generator.model_name,
             **({"key": result.key} if result.key else {}),
             **({"question": result.question} if result.question else {})}
            for path, seed in zip(files, result.seeds)]


def generate_prompts(generator, frame, prompts: list[str], paths: list[list[Path]],
                     on_written: OnWritten | None = None) -> list[dict]:
    """Each prompt's images for one frame, saved at its `paths` (see `output_paths`); the records."""
    records = []
    for files, result in zip(paths, generator.run([Request(frame, prompt) for prompt in prompts])):
        records += _write(generator, files, result, on_written)   # results come in request order
    return records


def generate_batch(generator, requests: Iterable[dict], out: str | Path, *, overwrite: bool = False,
                   on_written: OnWritten | None = None) -> BatchSummary:
    """`--batch`: many {"key", "image", "prompt"} requests (`read_batch_file`), one model load,
    denoised in batches, each written to OUT/{key}{suffix} (numbered with several images)."""
    summary = BatchSummary()
    todo, files = _plan_batch(generator, requests, Path(out), overwrite, summary)
    for result in generator.run(todo):
        summary.records += _write(generator, files[result.key], result, on_written)
    return summary


def _plan_batch(generator, requests, out: Path, overwrite: bool, summary: BatchSummary):
    """(the requests to run, key -> their image files); the others counted in `summary`."""
    n, suffix = generator.options.num_images, generator.options.suffix
    todo, files, seen = [], {}, set()
    for req in requests:
        if req["key"] in seen:                    # its image would overwrite (or pass for) the first one's
            summary.skipped.append((req["key"], "duplicate key: an earlier request has it"))
            continue
        seen.add(req["key"])
        paths = numbered(out / f"{req['key']}{suffix}", n)
        if all(p.exists() for p in paths) and not overwrite:
            summary.already_done += 1
            continue
        try:
            if not req["prompt"].strip():
                raise BadInput('empty prompt: say which action, e.g. "cut onion"')
            todo.append(Request(load_image(req["image"]), req["prompt"], key=req["key"]))
        except BadInput as e:
            summary.skipped.append((req["key"], str(e)))
            continue
        files[req["key"]] = paths
    return todo, files


def _write(generator, files: list[Path], result, on_written: OnWritten | None) -> list[dict]:
    for image, path in zip(result.images, files):
        save_image(image, path)
    records = image_records(generator, files, result)
    if on_written is not None:
        on_written(records, result)
    return records
