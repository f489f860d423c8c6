"""scripts/reproduce.sh end to end on tiny assets in the authors' release formats: a Lightning-style
checkpoint (CompVis names), their dataset layout with VLLM features, and the metric weights, all
made by the kit and imported through `lego import`, as a user would with the real ones."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LEGO, REPO

D, M = 16, 4          # the tiny VLLM width and image rows


def _authors_checkpoint(folder: Path, vllm_dim: int = D) -> tuple[Path, Path]:
    """(the .ckpt, the tiny base whose configs `--base` gives the importer)."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.importers import compvis
    from lego_core.kit import make_tiny_instruct_pix2pix

    base = make_tiny_instruct_pix2pix(folder / "base", sample_size=8)
    pipe = build_from_pretrained(base, conditioning="description+joint", vllm=vllm_dim)
    unet = pipe.unet.state_dict()
    state = compvis.to_compvis(unet=unet, unet_config=pipe.unet.config, vae=pipe.vae.state_dict(),
                               vae_config=pipe.vae.config, text_encoder=pipe.text_encoder.state_dict(),
                               conditioner=pipe.conditioner.state_dict(), ema_unet=unet)
    torch.save({"state_dict": state}, folder / "ego4d_diffusion_with_vllm_feature.ckpt")
    return folder / "ego4d_diffusion_with_vllm_feature.ckpt", base


def _authors_dataset(root: Path, features: Path, n: int = 3, dim: int = D) -> None:
    """ego4d_val.json, the frames under EgoGen/ego4d.fho/val/, and the released VLLM features."""
    rng = np.random.RandomState(0)
    entries = {}
    for i in range(n):
        entry = {"image_0": f"clip{i}/{i}_pre.jpg", "image_1": f"clip{i}/{i}_pnr.jpg", "action": "#C C cuts the onion",
                 "llava_forecast_finetune": "The right hand slices the onion with a knife."}
        entries[f"clip{i}"] = {str(i): entry}
        for rel in (entry["image_0"], entry["image_1"]):
            path = root / "EgoGen" / "ego4d.fho" / "val" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.rand(36, 64, 3) * 255).astype("uint8")).save(path, "JPEG")
        rel = Path(entry["image_0"]).with_suffix(".npy")
        for kind, arr in (("image", rng.rand(M, dim)), ("text", rng.rand(5, dim))):
            p = features / "ego4d" / f"vllm_{kind}_feature" / "llava-ckpt450" / "val" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            np.save(p, arr.astype(np.float16))
    (root / "ego4d_val.json").write_text(json.dumps(entries))


def _metric_weights(folder: Path) -> dict:
    """The authors' metric files by their names (random weights), and small CLIP / BLIP / FID models."""
    import torchvision

    from lego_core.kit.metric_models import (
        make_tiny_blip, make_tiny_clip, make_tiny_distilbert_tokenizer, make_tiny_egovlp, make_tiny_fid_features,
    )

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), folder / "squeezenet1_1-b8a52dc0.pth")
    (folder / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"")   # unused: EVAL_ARGS --fid-model
    make_tiny_egovlp(folder / "egovlp.pth", frames=4)
    make_tiny_distilbert_tokenizer(folder / "distilbert-base-uncased")
    return {"CLIP_MODEL": str(make_tiny_clip(folder / "clip")), "BLIP_B": str(make_tiny_blip(folder / "blip")),
            "BLIP_L": str(folder / "blip"), "EVAL_ARGS": f"--fid-model {make_tiny_fid_features(folder / 'fid')} "
                                                          "--device cpu --batch-size 2 --workers 1"}


def _env(tmp_path: Path, vllm_dim: int = D) -> dict:
    """The environment reproduce.sh reads, with tiny assets in the authors' formats under tmp_path."""
    ckpt, base = _authors_checkpoint(tmp_path, vllm_dim)
    data, features = tmp_path / "LEGO_Data", tmp_path / "vllm_features"
    _authors_dataset(data, features, dim=vllm_dim)
    return {**os.environ, **_metric_weights(tmp_path / "metrics"), "DATA": str(data), "FEATURES": str(features),
            "CKPT": str(ckpt), "METRICS": str(tmp_path / "metrics"), "BASE": str(base), "WORK": str(tmp_path / "work"),
            "STEPS": "2", "SIZE": "64", "LEGO": LEGO, "PYTHON": sys.executable, "DS_ACCELERATOR": "cpu"}


def _table(stdout: str, n: int) -> dict:
    """{metric: [ours, paper]} from the printed table, every metric of the paper's scored."""
    lines = stdout.splitlines()
    assert lines[0].startswith(f"LEGO on ego4d, {n} test samples")
    table = {line.split()[0]: line.split()[2:] for line in lines[2:10]}
    assert list(table) == ["egovlp", "egovlp_plus", "clip", "fid", "psnr", "lpips", "blip_b", "blip_l"]
    for metric, (ours, _) in table.items():
        assert ours != "n/a", metric
        float(ours)
    return table


def test_reproduce_sh_imports_generates_the_authors_way_and_prints_the_table(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh"), "ego4d"], capture_output=True, text=True,
                          env=env, timeout=3600)   # a hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _table(proc.stdout, 3)
    # the paper's Ego4D figures as printed (see the source beside them in the script); LPIPS in its units
    assert [table[m][1] for m in ("egovlp", "egovlp_plus", "clip", "fid", "psnr", "lpips")] == \
        ["65.65", "80.44", "80.61", "23.83", "12.29", "36.43"]
    assert table["blip_b"][1] == "n/a" and "blip_b, blip_l" in proc.stdout
    ours = json.loads((tmp_path / "work" / "eval.json").read_text())
    lpips = dict(zip(ours["table"]["columns"], ours["table"]["rows"][0]))["lpips"]
    assert float(table["lpips"][0]) == pytest.approx(100 * lpips, abs=1e-4)

    # generated the authors' way: their post-processing (JPEGs), recorded beside the images
    generated = tmp_path / "work" / "eval" / "generated"
    jpgs = sorted(p.name for p in generated.glob("*.jpg"))
    assert len(jpgs) == 3 and not list(generated.glob("*.png"))
    assert Image.open(generated / jpgs[0]).format == "JPEG"
    assert "the authors'" in json.loads((generated / "provenance.json").read_text())["post_processing"]
    # and scored with their settings
    settings = json.loads((tmp_path / "work" / "eval.json").read_text())["sets"][0]["settings"]
    assert "authors'" in settings["lpips"]["input_range"] and settings["lpips"]["net"] == "squeeze"
    assert settings["egovlp"]["frames"] == 4 and settings["egovlp"]["checkpoint"].endswith("egovlp.pth")
    assert settings["blip"]["text_encoder"].startswith("EgoVLP text branch")

    bad = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh"), "coco"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_reproduce_sh_with_their_vllm_redescribes_and_prints_the_table(tmp_path):
    """VLLM=DIR: their LLaVA (original layout, made by the kit) is imported with `lego import vllm`,
    re-describes the imported test split with their question, and the table prints."""
    from lego_core.kit.original_llava import make_tiny_original_llava

    llava = make_tiny_original_llava(tmp_path / "llava-release")
    env = {**_env(tmp_path, vllm_dim=64), "VLLM": str(llava["src"]), "VISION_TOWER": str(llava["tower_dir"]),
           "LIMIT": "2", "ENRICH_ARGS": "--max-new-tokens 4 --greedy --batch-size 2"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh"), "ego4d"], capture_output=True, text=True,
                          env=env, timeout=3600)   # a hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    _table(proc.stdout, 2)
    work = tmp_path / "work"
    assert (work / "llava" / "config.json").is_file()
    from lego_core.data.shards import iter_samples

    enriched = list(iter_samples(sorted(str(p) for p in (work / "enriched").glob("val-*.tar"))))
    assert len(enriched) == 2
    for s in enriched:              # the VLLM's own description and embeddings (width 64), not the released ones
        assert s["enriched.txt"].decode() != "The right hand slices the onion with a knife."
        assert np.load(io.BytesIO(s["vllm_img.npy"])).shape[1] == 64
    record = json.loads(next((work / "enriched").glob("*.enrich.json")).read_text())
    assert "How does the person properly {action} that is displayed in the video frame?" in json.dumps(record)
