"""The learning demo's results: `lego evaluate`'s own outputs, plus what the model learned.

The generated frames of every trained model go through the real evaluator (pixel metrics only:
the demo's CLIP/BLIP/EgoVLP/FID/LPIPS networks would be random, so their scores would mean
nothing), then `report.html` gains a section "What the model learned" — the checks of
`lego_core.evidence` with their goals, the ablation rows, the VLLM's description scores and a
figure of held-out samples: input | generated | wrong verb | wrong object | ground truth — and
`metrics.json` gains the same figures under "learning".
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from lego_core.atomic import write_atomic

FIGURE_ROWS = 8


def write_learning_report(out, cases, results: dict, vllm: dict, vae: dict | None, *, main: str,
                          test_shards: list[str]) -> dict:
    """Write OUT/{metrics.json, report.html, learning.png, ...}; return {"table", "passed"}."""
    from lego_core.metrics.runner import EvalConfig, evaluate

    out = Path(out)
    folders = {}
    for cond, result in results.items():
        folder = out / "generated" / cond.replace("+", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for key, ims in result["images"].items():
            ims["true"].save(folder / f"{key}.png")
        folders[cond] = str(folder)
    evaluate(folders, test_shards, EvalConfig(metrics=("psnr", "psnr_changed"), device="cpu", seed=0), out=str(out))
    figure = out / "learning.png"
    _figure(cases, results[main]["images"]).save(figure)
    learning = {cond: {"summary": r["summary"], "checks": r["checks"], "samples": r["samples"]}
                for cond, r in results.items()}
    passed = all(c["passed"] for c in results[main]["checks"])
    vllm_ok = vllm.get("tuned", {}).get("verb_object", 0) >= 0.9 and vllm.get("tuned", {}).get("location", 0) >= 0.8
    extra = {"learning": learning, "vllm_descriptions": vllm, "vae": vae, "main": main,
             "passed": passed and vllm_ok,
             "note": "demo: the metric networks (CLIP, BLIP, EgoVLP, FID, LPIPS) are random here, so only pixel "
                     "metrics are reported"}
    metrics_file = out / "metrics.json"
    data = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    write_atomic(metrics_file, json.dumps({**data, **extra}, indent=1, default=str))
    table = learning_table(results, vllm, vae, main)
    write_atomic(out / "learning.txt", table + "\n")
    report = out / "report.html"
    page = report.read_text(encoding="utf-8") if report.is_file() else "<html><body></body></html>"
    section = _section(results, vllm, vae, main, figure)
    page = page.replace("<body>", "<body>" + section, 1) if "<body>" in page else section + page
    write_atomic(report, page)
    return {"table": table, "passed": extra["passed"]}


def learning_table(results: dict, vllm: dict, vae: dict | None, main: str) -> str:
    """Plain text: the ablation rows, the main model's checks, the VLLM's description scores."""
    cols = ("psnr_changed", "input_psnr_changed", "psnr_unchanged", "vae_psnr_unchanged", "beats_input")
    f = lambda v: "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["held-out samples, pixels the action changed / the rest (dB):",
             "  " + "  ".join([f"{'model':<20}", *(f"{c:>18}" for c in cols), f"{'true−wrong verb':>16}",
                               f"{'true−wrong object':>18}"])]
    for cond, r in results.items():
        s = r["summary"]
        dv = _diff(s, "true_other_verb_psnr_changed", "other_verb_psnr_changed")
        do = _diff(s, "true_other_object_psnr_changed", "other_object_psnr_changed")
        lines.append("  " + "  ".join([f"{cond:<20}", *(f"{f(s.get(c)):>18}" for c in cols), f"{f(dv):>16}",
                                        f"{f(do):>18}"]))
    lines += ["", f"checks ({main}):"]
    for c in results[main]["checks"]:
        lines.append(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {f(c['value'])} (goal ≥ {c['goal']})")
    lines += ["", "VLLM descriptions of held-out frames (share naming verb+object / the object's place):"]
    for name, v in vllm.items():
        lines.append(f"  {name:<20} {v['verb_object']:.2f} / {v['location']:.2f}")
    if vae:
        lines += ["", f"VAE round trip, held-out frames: {vae['psnr']:.1f} dB (scaling factor {vae['scaling_factor']})"]
    return "\n".join(lines)


def _diff(s: dict, a: str, b: str):
    return None if s.get(a) is None or s.get(b) is None else s[a] - s[b]


def _figure(cases, images: dict):
    """Rows of held-out samples: input | generated | wrong verb | wrong object | ground truth."""
    from PIL import Image, ImageDraw

    cell, pad = 128, 14
    rows = [c for c in cases if c.key in images][:FIGURE_ROWS]
    canvas = Image.new("RGB", (5 * cell, len(rows) * (cell + pad) + pad), "white")
    d = ImageDraw.Draw(canvas)
    for j, c in enumerate(rows):
        y = pad + j * (cell + pad)
        ims = images[c.key]
        for k, (im, caption) in enumerate(((c.input, "input"), (ims["true"], c.label),
                                           (ims.get("other_verb"), c.wrong.get("other_verb", "")),
                                           (ims.get("other_object"), c.wrong.get("other_object", "")),
                                           (c.target, "ground truth"))):
            if im is not None:
                canvas.paste(im.convert("RGB").resize((cell, cell)), (k * cell, y))
            d.text((k * cell + 2, y - pad + 1), caption[:22], fill="black")
    return canvas


def _section(results: dict, vllm: dict, vae: dict | None, main: str, figure: Path) -> str:
    esc = html.escape
    checks = "".join(f"<tr><td>{'pass' if c['passed'] else 'FAIL'}</td><td>{esc(c['name'])}</td><td>{c['value']}</td>"
                     f"<td>≥ {c['goal']}</td></tr>" for c in results[main]["checks"])
    desc = "".join(f"<tr><td>{esc(n)}</td><td>{v['verb_object']:.2f}</td><td>{v['location']:.2f}</td>"
                   f"<td>{esc(v.get('example', ''))}</td></tr>" for n, v in vllm.items())
    buf = io.BytesIO()
    from PIL import Image

    with Image.open(figure) as im:
        im.convert("RGB").save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    vae_line = f"<p>VAE round trip of held-out frames: {vae['psnr']:.1f} dB.</p>" if vae else ""
    return (
        "<section style='font-family:sans-serif'><h2>What the model learned (held-out clips)</h2>"
        "<p>Each row: the input frame, the frame generated for the true action, for a wrong verb on the same "
        "object, for the same verb on another object in the scene, and the true action frame. The world is "
        "made so that only the action decides the change; the numbers below are measured on clips no model saw. "
        "The metric networks are random in the demo, so only pixel metrics are shown.</p>"
        f"<img src='data:image/png;base64,{img}' style='image-rendering:pixelated;max-width:100%'>"
        f"<h3>Checks ({esc(main)})</h3><table border=1 cellpadding=4>"
        f"<tr><th></th><th>check</th><th>value</th><th>goal</th></tr>{checks}</table>"
        f"<h3>Ablation</h3><pre>{esc(learning_table(results, vllm, vae, main))}</pre>"
        "<h3>VLLM descriptions</h3><table border=1 cellpadding=4><tr><th>model</th><th>verb + object</th>"
        f"<th>object's place</th><th>example</th></tr>{desc}</table>{vae_line}</section><hr>")
