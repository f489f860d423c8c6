"""`lego demo`: the whole method end to end on the bundled sample, with tiny models.

extract -> curate -> tune-vllm -> enrich -> train -> generate (held-out samples) -> evaluate.
Every stage is the same function its subcommand runs; each finished stage leaves a marker
(`OUT/.done/<stage>.json`), so a rerun skips it and a killed run picks up where it stopped.
The models are tiny and random-initialised (nothing can be downloaded): the demo shows the
pipeline and its artefacts, not the paper's image quality.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("lego.demo")


@dataclass
class DemoConfig:
    out: str = "out/demo"
    llm_base_url: str | None = None        # an OpenAI-compatible server for curate; None: template backend
    llm: str = "gpt-3.5-turbo"
    resolution: int = 64                   # tiny SD works at 64x64 here (8x8 latents)
    tune_epochs: float = 3.0
    train_steps: int = 60
    gen_steps: int = 20
    max_new_tokens: int = 32
    held_out_every: int = 5                # every 5th sample (by key order) is held out for evaluation
    seed: int = 0
    progress: bool = True


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.done_dir = self.root / ".done"
        self.artefacts: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def stage(self, name: str, fn: Callable[[], dict]) -> dict:
        """Run `fn` unless its marker says it finished; record what it produced."""
        marker = self.done_dir / f"{name}.json"
        if marker.is_file():
            result = json.loads(marker.read_text())
            log.info("%s: done before, skipped", name)
        else:
            t = time.perf_counter()
            log.info("%s ...", name)
            result = fn()
            self.timings[name] = round(time.perf_counter() - t, 1)
            self.done_dir.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1, default=str))
            tmp.replace(marker)
        self.artefacts.update({f"{name}: {k}": str(v) for k, v in result.items()
                               if isinstance(v, (str, Path)) and k != "table"})
        return result

    # -- stages ----------------------------------------------------------------------------------

    def make_source(self) -> dict:
        from lego_core.data.synthetic import make_sample

        paths = make_sample(self.path("source"), seed=self.cfg.seed)
        return {"epic_csv": paths["epic_csv"], "ego4d_json": paths["ego4d_json"],
                "videos": str(self.path("source"))}

    def extract(self, source: dict) -> dict:
        from lego_core.data.extract import ExtractConfig, extract

        progress = self.cfg.progress
        for dataset, annotations, videos in (
            ("epic-kitchens", source["epic_csv"], Path(source["epic_csv"]).parent / "videos"),
            ("ego4d", source["ego4d_json"], Path(source["ego4d_json"]).parent / "videos"),
        ):
            name = "epic" if dataset == "epic-kitchens" else "ego4d"
            extract(ExtractConfig(dataset=dataset, annotations=annotations, videos=str(videos),
                                  out=str(self.path("shards", "extracted", f"{name}-%06d.tar"))), progress=progress)
        return {"shards": str(self.path("shards", "extracted"))}

    def split(self, extracted: dict) -> dict:
        """Held-out samples for evaluation, never seen by either model."""
        from lego_core.data.shards import ShardWriter, iter_samples

        samples = sorted(iter_samples([extracted["shards"]]), key=lambda s: s["__key__"])
        out = {}
        for part in ("train", "test"):
            chosen = [s for i, s in enumerate(samples)
                      if (i % self.cfg.held_out_every == self.cfg.held_out_every - 1) == (part == "test")]
            with ShardWriter(str(self.path("shards", "split", f"{part}-%06d.tar"))) as w:
                for s in chosen:
                    w.write(s)
            out[part] = str(self.path("shards", "split", f"{part}-000000.tar"))
            out[f"{part}_samples"] = len(chosen)
        return out

    def curate(self, split: dict) -> dict:
        from lego_core.curate.run import CurateConfig, curate

        out = {}
        for part in ("train", "test"):
            pattern = str(self.path("shards", "curated", f"{part}-%06d.tar"))
            cfg = CurateConfig(inputs=[split[part]], out=pattern, seed=self.cfg.seed,
                               backend="openai" if self.cfg.llm_base_url else "template",
                               base_url=self.cfg.llm_base_url, llm=self.cfg.llm)
            curate(cfg, progress=self.cfg.progress)
            out[part] = pattern.replace("%06d", "000000")
        return out

    def models(self) -> dict:
        """The tiny starting points (what real users download: LLaVA, SD-1.5, metric weights)."""
        import torch
        import torchvision

        from lego_core.kit import make_tiny_llava, make_tiny_sd
        from lego_core.kit.metrics import make_tiny_blip, make_tiny_clip, make_tiny_egovlp, make_tiny_fid_features

        m = self.path("models")
        out = {"llava": str(make_tiny_llava(m / "llava-base", seed=self.cfg.seed)),
               "sd": str(make_tiny_sd(m / "sd-base", sample_size=self.cfg.resolution // 8, seed=self.cfg.seed)),
               "clip": str(make_tiny_clip(m / "metrics" / "clip")),
               "blip": str(make_tiny_blip(m / "metrics" / "blip")),
               "fid": str(make_tiny_fid_features(m / "metrics" / "fid")),
               "egovlp": str(make_tiny_egovlp(m / "metrics" / "egovlp.pth"))}
        torch.manual_seed(self.cfg.seed)
        squeeze = m / "metrics" / "squeezenet1_1.pth"
        torch.save(torchvision.models.squeezenet1_1().state_dict(), squeeze)
        out["lpips"] = str(squeeze)
        return out

    def tune(self, curated: dict, models: dict) -> dict:
        from lego_core.vllm.tune import TuneConfig, tune

        from lego_core.engine.config import EngineOptions

        run = self.path("runs", "llava")
        model = tune(TuneConfig(shards=[curated["train"]], vllm=models["llava"], out=str(run),
                                epochs=self.cfg.tune_epochs, learning_rate=5e-4, workers=0,
                                gradient_checkpointing=False, checkpoint_every=10 ** 6, seed=self.cfg.seed,
                                progress=self.cfg.progress,
                                engine=EngineOptions(micro_batch=4, grad_accum=1, zero_stage=2, precision="fp32")))
        return {"vllm": str(model), "run": str(run)}

    def enrich(self, curated: dict, tuned: dict) -> dict:
        from lego_core.vllm.enrich import EnrichConfig, enrich

        out = {}
        for part in ("train", "test"):
            pattern = str(self.path("shards", "enriched", f"{part}-%06d.tar"))
            enrich(EnrichConfig(shards=[curated[part]], vllm=tuned["vllm"], out=pattern, batch_size=8,
                                max_new_tokens=self.cfg.max_new_tokens, greedy=True, seed=self.cfg.seed,
                                device="cpu", num_shards=1, shard_index=0), progress=self.cfg.progress)
            out[part] = pattern.replace("%06d", "000000")
        return out

    def train(self, enriched: dict, models: dict) -> dict:
        from lego_core.diffusion.train import TrainConfig, train
        from lego_core.engine.config import EngineOptions

        run = self.path("runs", "lego")
        model = train(TrainConfig(
            shards=[enriched["train"]], out=str(run), base=models["sd"], resolution=self.cfg.resolution,
            max_steps=self.cfg.train_steps, learning_rate=1e-3, workers=0, checkpoint_every=self.cfg.train_steps,
            val_shards=[enriched["test"]], val_every=self.cfg.train_steps, val_samples=3, val_steps=10,
            seed=self.cfg.seed, progress=self.cfg.progress,
            engine=EngineOptions(micro_batch=4, grad_accum=1, zero_stage=2, precision="fp32")))
        return {"model": str(model), "run": str(run)}

    def evaluate(self, enriched: dict, trained: dict, models: dict) -> dict:
        from lego_core.metrics.report import table_text
        from lego_core.metrics.runner import EvalConfig, evaluate_models

        cfg = EvalConfig(batch_size=8, device="cpu", lpips_weights=models["lpips"], fid_model=models["fid"],
                         clip_model=models["clip"], blip_models=(f"b={models['blip']}",), egovlp=models["egovlp"],
                         egovlp_frames=4, seed=self.cfg.seed)
        out = self.path("eval")
        result = evaluate_models([enriched["test"]], {"lego": trained["model"]}, cfg, out=str(out),
                                 progress=self.cfg.progress,
                                 generate_options={"steps": self.cfg.gen_steps, "size": self.cfg.resolution,
                                                   "seed": self.cfg.seed, "device": "cpu"})
        table = table_text(result)
        (out / "table.txt").write_text(table + "\n")
        # one model: its files sit in OUT itself (several: OUT/NAME/ and a comparison in OUT)
        return {"report": str(out / "report.html"), "metrics": str(out / "metrics.json"),
                "samples": str(out / "samples.csv"), "generated": str(out / "generated"), "table": table}

    # -- the whole run ---------------------------------------------------------------------------

    def run(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "demo-config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        source = self.stage("source", self.make_source)
        extracted = self.stage("extract", lambda: self.extract(source))
        split = self.stage("split", lambda: self.split(extracted))
        curated = self.stage("curate", lambda: self.curate(split))
        models = self.stage("models", self.models)
        tuned = self.stage("tune-vllm", lambda: self.tune(curated, models))
        enriched = self.stage("enrich", lambda: self.enrich(curated, tuned))
        trained = self.stage("train", lambda: self.train(enriched, models))
        evaluated = self.stage("evaluate", lambda: self.evaluate(enriched, trained, models))
        return {"out": str(self.root), "artefacts": self.artefacts, "table": evaluated["table"],
                "report": evaluated["report"], "seconds": self.timings}


def run_demo(cfg: DemoConfig) -> dict:
    return Demo(cfg).run()
