"""`lego import dataset`: the authors' released dataset (+ VLLM features) -> lego shards.

Their layout (LEGO_Data after unzipping, and their configs' paths)::

    ROOT/{ego4d,epickitchen}_{train,val}.json   {clip_id: {action_id: {"image_0", "image_1", "action",
                                                                       "llava_forecast_finetune", ...}}}
    ROOT/EgoGen/ego4d.fho/{train,val}/<image_0>   frames (image_0: input X, image_1: target Y)
    ROOT/EgoGen/epickitchen/{train,val}/<image_0>
    FEATURES/{ego4d,epickitchen}/vllm_image_feature/<vllm name>/{train,val}/<image_0 with .npy>
    FEATURES/{ego4d,epickitchen}/vllm_text_feature/<vllm name>/{train,val}/<image_0 with .npy>

image features are (256, D) (projector output, patch tokens), text features (n, D) (or (n, L, D),
of which the authors keep the last layer, as here); both stored float16. "val" is the test set of
the paper. Each action becomes one sample: input.jpg / target.jpg (their JPEG bytes, untouched),
meta.json (label = "action"; the Ego4D narration cleaned the way `lego extract` cleans it, the raw one
kept as "narration"; "question_action": the action as the authors' VLLM question words it, "cut the
onion" for Ego4D (`labels.authors_ego4d_action`), EPIC-KITCHENS' as it is; frame times are
not in their release, so t_input = t_target = 0), enriched.txt
(`llava_forecast_finetune`), vllm_img.npy, vllm_txt.npy. Missing or unreadable files skip
the action (rejects file beside the shards); rerunning resumes.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from lego_core.errors import BadInput

log = logging.getLogger("lego.import")

DATASETS = {"ego4d": ("ego4d", "ego4d.fho", 30.0), "epickitchen": ("epic-kitchens", "epickitchen", 60.0)}


@dataclass
class DatasetImport:
    out: str
    written: int = 0
    already_done: int = 0
    skipped: dict = field(default_factory=dict)   # reason -> count
    shards: list[str] = field(default_factory=list)
    rejects_file: str | None = None
    features: bool = False

    def lines(self) -> list[str]:
        out = [*self.shards] if self.shards else []
        out.append(f"imported {self.written} samples"
                   + (f", {self.already_done} already done" if self.already_done else "")
                   + ("" if self.features else " (no --features: no vllm_img.npy / vllm_txt.npy)"))
        if self.skipped:
            out.append(f"skipped {sum(self.skipped.values())}: "
                       + ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
                       + f" (see {self.rejects_file})")
        return out


def _frames_dir(root: Path, folder: str, split: str) -> Path:
    for candidate in (root / "EgoGen" / folder / split, root / folder / split, root / "EgoGen" / folder, root / folder):
        if candidate.is_dir():
            return candidate
    raise BadInput(f"no frames for {folder}/{split} under {root} (expected {root / 'EgoGen' / folder / split})")


def _feature_dir(features: Path, name: str, kind: str, split: str) -> Path:
    """FEATURES/<name>/vllm_<kind>_feature/<model>/<split> (or without the <name> level)."""
    for base in (features / name / f"vllm_{kind}_feature", features / f"vllm_{kind}_feature"):
        if not base.is_dir():
            continue
        if (base / split).is_dir():
            return base / split
        models = sorted(p for p in base.iterdir() if (p / split).is_dir())
        if len(models) == 1:
            return models[0] / split
        if len(models) > 1:
            raise BadInput(f"{base} holds features of {len(models)} VLLMs ({', '.join(m.name for m in models)}); "
                           f"point --features at one: keep only its folder")
    raise BadInput(f"no {kind} features for {name}/{split} under {features} "
                   f"(expected {features / name / f'vllm_{kind}_feature' / '<vllm>' / split})")


def _jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:3] == b"\xff\xd8\xff":
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=95)
        return buf.getvalue()


def _features(path: Path, kind: str):
    import numpy as np

    a = np.load(path, allow_pickle=False)
    if kind == "text" and a.ndim == 3:
        a = a[:, -1, :]           # (n, layers, D): the last layer, as the authors' loader does
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{kind} features of shape {a.shape}, expected 2-D")
    return a.astype(np.float16)


def _label(name: str, action: str) -> tuple[str, str, str]:
    from lego_core.data.labels import clean_narration

    text = " ".join(str(action).split())
    label = clean_narration(text) if name == "ego4d" or text.startswith("#") else text
    words = label.split()
    return label, (words[0] if words else ""), " ".join(words[1:])


def _question_action(name: str, action: str) -> str:
    """The action as the authors' inference script put it into the VLLM's question."""
    from lego_core.data.labels import authors_ego4d_action

    return authors_ego4d_action(action) if name == "ego4d" else str(action)


def import_dataset(root: str | os.PathLike, split: str, out: str, *, which: str = "all",
                   features: str | os.PathLike | None = None, limit: int | None = None,
                   max_samples_per_shard: int = 1000, overwrite: bool = False,
                   progress: bool = False) -> DatasetImport:
    """Write the authors' `split` ("train"/"val") of `which` ("ego4d", "epickitchen", "all") as shards."""
    from PIL import Image
    from tqdm import tqdm

    from lego_core.data import shards as sh
    from lego_core.data.shards import sidecar
    from lego_core.data.schema import ENRICHED, INPUT, META, TARGET, VLLM_IMG, VLLM_TXT, make_key, validate_sample

    if split not in ("train", "val"):
        raise BadInput(f"--split must be train or val, not {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"dataset folder not found: {root}")
    names = list(DATASETS) if which == "all" else [which]
    if which not in (*DATASETS, "all"):
        raise BadInput(f"--dataset must be ego4d, epickitchen or all, not {which!r}")
    jsons = {n: root / f"{n}_{split}.json" for n in names if (root / f"{n}_{split}.json").is_file()}
    if not jsons:
        raise BadInput(f"no {' or '.join(f'{n}_{split}.json' for n in names)} in {root}")
    plan = []
    for name, path in jsons.items():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise BadInput(f"{path}: expected {{clip_id: {{action_id: {{image_0, image_1, action, ...}}}}}}")
        frames = _frames_dir(root, DATASETS[name][1], split)
        feats = None
        if features is not None:
            feats = (_feature_dir(Path(features), name, "image", split),
                     _feature_dir(Path(features), name, "text", split))
        for clip_id, actions in data.items():
            for action_id, entry in actions.items():
                plan.append((name, clip_id, action_id, entry, frames, feats))
    if limit is not None:
        plan = plan[:limit]

    pattern = sh.shard_pattern(out)
    done, start = sh.prepare_output(pattern, overwrite=overwrite)
    summary = DatasetImport(out=out, features=features is not None,
                            rejects_file=sidecar(pattern, "import-rejects.jsonl"))
    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    with open(summary.rejects_file, "w", encoding="utf-8") as rejects, \
            sh.ShardWriter(pattern, max_samples=max_samples_per_shard, start_index=start) as writer:
        def reject(key, reason, detail=""):
            summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
            rejects.write(json.dumps({"key": key, "reason": reason, "detail": detail}) + "\n")

        for name, clip_id, action_id, entry, frames, feats in tqdm(plan, desc="import", unit="action",
                                                                   disable=not progress):
            dataset_name, _, fps = DATASETS[name]
            key = make_key(dataset_name, clip_id, action_id)
            if key in done:
                summary.already_done += 1
                continue
            if not isinstance(entry, dict) or not entry.get("image_0") or not entry.get("image_1"):
                reject(key, "no image_0/image_1 in the JSON")
                continue
            label, verb, noun = _label(name, entry.get("action", ""))
            if not label:
                reject(key, "empty action")
                continue
            try:
                x_path, y_path = frames / entry["image_0"], frames / entry["image_1"]
                x, y = _jpeg(x_path), _jpeg(y_path)
                with Image.open(io.BytesIO(x)) as im:
                    width, height = im.size
            except FileNotFoundError as e:
                reject(key, "frame missing", str(e.filename))
                continue
            except Exception as e:  # noqa: BLE001 - one bad frame never ends the run
                reject(key, "unreadable frame", str(e)[:200])
                continue
            meta = {"dataset": dataset_name, "video_id": str(clip_id), "action_id": str(action_id), "label": label,
                    "verb": verb, "noun": noun, "t_input": 0.0, "t_target": 0.0, "fps": fps, "width": width,
                    "height": height, "boxes": [], "source": "lego-release", "image_0": entry["image_0"],
                    "image_1": entry["image_1"], "split": split}
            if name == "ego4d":
                meta["narration"] = entry.get("action", "")
            meta["question_action"] = _question_action(name, entry.get("action", ""))
            sample = {"__key__": key, INPUT: x, TARGET: y, META: meta}
            description = (entry.get("llava_forecast_finetune") or "").strip()
            if description:
                sample[ENRICHED] = description
            if feats is not None:
                rel = Path(entry["image_0"]).with_suffix(".npy")
                try:
                    sample[VLLM_IMG] = _features(feats[0] / rel, "image")
                    sample[VLLM_TXT] = _features(feats[1] / rel, "text")
                except FileNotFoundError as e:
                    reject(key, "features missing", str(e.filename))
                    continue
                except Exception as e:  # noqa: BLE001
                    reject(key, "unreadable features", str(e)[:200])
                    continue
            encoded = {k: (v if k == "__key__" else sh.encode_value(k, v)) for k, v in sample.items()}
            problems = validate_sample(encoded)
            if problems:
                reject(key, problems[0], "; ".join(problems))
                continue
            writer.write(encoded)
            summary.written += 1
    summary.shards = list(writer.shards)
    return summary
