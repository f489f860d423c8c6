"""`lego inspect SHARDS...`: what is in a set of shards, and what is wrong with it.

Reads the tars with `tarfile` only (no torch, no webdataset), so it is quick to start.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Sequence

from lego_core.data.schema import FIELDS, META, decode_npy, validate_sample
from lego_core.data.shards import CORRUPT, MAX_MEMBER_MB, TOO_BIG, expand_shards, iter_tar, too_big_reason

_EXAMPLES = 3


def _field_summary(name: str, data: bytes) -> Any:
    """Shape/dtype for arrays, pixel size for images, a short preview for text, else byte count."""
    try:
        if name.endswith(".npy"):
            a = decode_npy(data)
            return {"shape": list(a.shape), "dtype": str(a.dtype)}
        if name.endswith((".jpg", ".jpeg", ".png")):
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                return {"size": [im.width, im.height], "bytes": len(data)}
        if name.endswith(".txt"):
            text = data.decode("utf-8")
            return text if len(text) <= 200 else text[:200] + "..."
    except Exception as e:  # the validator reports it; the summary just says it failed
        return f"unreadable ({type(e).__name__})"
    return {"bytes": len(data)}


def inspect_shards(urls: str | Sequence[str], *, validate: bool = True, full: bool = False,
                   max_member_mb: float = MAX_MEMBER_MB) -> dict:
    """A JSON-serialisable report on ``urls`` (anything `expand_shards` accepts).

    Keys: shards, samples, bytes, per_shard ({path: samples}), fields ({name: samples having it}),
    datasets ({dataset: samples}), problems ({message: count}), problem_examples ({message: first
    keys}), valid (samples with no problem; None when not validated), corrupt_shards, first (key,
    meta and field summaries of the first sample). ``full`` decodes every JPEG instead of checking
    its markers only. A member over ``max_member_mb`` is not read; its sample counts as a problem.
    """
    paths = expand_shards(urls)
    fields: Counter[str] = Counter()
    datasets: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    per_shard: dict[str, int] = {}
    corrupt: list[dict] = []
    samples = valid = 0
    first = None
    total_bytes = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))

    for path in paths:
        n = 0
        try:
            for sample in iter_tar(path, max_member_mb=max_member_mb):
                n += 1
                key = sample["__key__"]
                names = [k for k in sample if not k.startswith("_")] + [name for name, _ in sample.get(TOO_BIG, [])]
                fields.update(names)
                meta = None
                try:
                    meta = json.loads(sample[META]) if META in sample else None
                except ValueError:
                    pass
                dataset = meta.get("dataset") if isinstance(meta, dict) else None
                datasets[dataset if isinstance(dataset, str) else "(unknown)"] += 1
                if first is None:
                    first = {
                        "key": key,
                        "shard": path,
                        "meta": meta,
                        "fields": {k: _field_summary(k, sample[k]) if k in sample else "not read (too big)"
                                   for k in sorted(names) if k != META},
                    }
                big = too_big_reason(sample, max_member_mb)
                if validate or big:
                    found = [big] if big else validate_sample(sample, decode_images=full)
                    for msg in found:
                        problems[msg] += 1
                        ex = examples.setdefault(msg, [])
                        if len(ex) < _EXAMPLES:
                            ex.append(key)
                    valid += not found
        except Exception as e:  # truncated/corrupt tar: report it and go on with the next shard
            corrupt.append({"shard": path, "error": f"{type(e).__name__}: {e}", "samples_before": n})
            problems[CORRUPT] += 1
            ex = examples.setdefault(CORRUPT, [])
            if len(ex) < _EXAMPLES:
                ex.append(path)
        per_shard[path] = n
        samples += n

    return {
        "shards": len(paths),
        "samples": samples,
        "bytes": total_bytes,
        "per_shard": per_shard,
        "fields": dict(sorted(fields.items(),
                              key=lambda kv: (list(FIELDS).index(kv[0]) if kv[0] in FIELDS else len(FIELDS), kv[0]))),
        "datasets": dict(datasets.most_common()),
        "validated": validate,
        "valid": valid if validate else None,
        "problems": dict(problems.most_common()),
        "problem_examples": examples,
        "corrupt_shards": corrupt,
        "first": first,
    }


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_inspection(report: dict) -> str:
    """The report as text for a terminal."""
    r = report
    lines = [f"{r['shards']} shard(s), {r['samples']} sample(s), {_human_bytes(r['bytes'])}"]
    counts = list(r["per_shard"].values())
    if counts:
        if len(counts) <= 10:
            lines += [f"  {os.path.basename(p)}: {n}" for p, n in r["per_shard"].items()]
        else:
            lines.append(f"  samples per shard: min {min(counts)}, max {max(counts)}")
    if r["datasets"]:
        lines.append("datasets: " + ", ".join(f"{d} {n}" for d, n in r["datasets"].items()))
    lines.append("fields:")
    for name, n in r["fields"].items():
        desc = FIELDS[name].description if name in FIELDS else "(not in the schema)"
        lines.append(f"  {name:<18} {n:>8}  {desc}")
    if r["validated"]:
        if r["problems"]:
            lines.append(f"problems ({r['samples'] - r['valid']} of {r['samples']} samples invalid):")
            for msg, n in r["problems"].items():
                ex = ", ".join(r["problem_examples"].get(msg, []))
                lines.append(f"  {n:>6} x {msg}" + (f"  (e.g. {ex})" if ex else ""))
        else:
            lines.append(f"all {r['samples']} samples valid")
    for c in r["corrupt_shards"]:
        lines.append(f"corrupt shard {c['shard']}: {c['error']} after {c['samples_before']} sample(s)")
    if r["first"]:
        f = r["first"]
        lines.append(f"first sample: {f['key']}")
        if f["meta"] is not None:
            lines.append("  meta.json: " + json.dumps(f["meta"], ensure_ascii=False, sort_keys=True))
        for name, s in f["fields"].items():
            lines.append(f"  {name}: {s if isinstance(s, str) else json.dumps(s)}")
    return "\n".join(lines)
