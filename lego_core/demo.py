"""`lego demo`: the whole method end to end on a synthetic kitchen, with tiny models that learn it.

world → extract → split (by clip) → curate → models (tiny SD with its VAE fitted to the world, tiny
LLaVA) → tune-vllm → enrich → train (description+joint, and the label-only ablation) → evaluate
(held-out: generated vs input, true vs wrong actions, the VLLM's descriptions) → report.

Every stage is the same function its subcommand runs; each finished stage leaves a marker
(`OUT/.done/<stage>.json`), so a rerun skips it and a killed run picks up where it stopped. The
world (`lego_core.kit.world`) is made so that only the action decides the change, and the models
are sized to learn it on 2 CPU cores in minutes: the report shows whether they did, with the
numbers the learning test asserts. The metric networks (CLIP, BLIP, EgoVLP, FID, LPIPS) would be
random here, so the demo scores pixels only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from lego_core.atomic import write_atomic

log = logging.getLogger("lego.demo")


@dataclass
class DemoConfig:
    out: str = "out/demo"
    llm_base_url: str | None = None        # an OpenAI-compatible server for curate; None: template backend
    llm: str = "gpt-3.5-turbo"
    clips: int = 112                       # one layout each, 3 actions: 336 pairs
    # 48 px is what the VLLM sees: an object 0.01 from a third's edge is left or centre by a third of
    # a pixel. 0.03 = 1.4 px keeps "where it is" readable (without it, 5 of the 36 held-out objects were closer).
    place_margin: float = 0.03
    test_clips: int = 12                   # held out by clip: 36 pairs no model sees
    resolution: int = 32                   # the diffusion model's: 16x16 latents with the factor-2 VAE
    vae_channels: tuple[int, ...] = (16, 32)          # 2 blocks: VAE factor 2
    unet_channels: tuple[int, ...] = (32, 64)
    # The tiny UNet starts from random weights and predicts v (SD-2's target) rather than SD-1.5's
    # ε: on the reduced world it reaches at 250 steps what ε reaches at 1000 (see README).
    prediction_type: str = "v_prediction"
    vae_steps: int = 400
    # from the world-aligned LLaVA (kit/llava_align.py): 12 epochs do not yet name the verb
    tune_epochs: float = 16.0
    tune_lr: float = 5e-4
    tune_vision_tower: bool = False        # the paper's choice: the aligned tower is kept as it is
    train_steps: int = 700                 # v-prediction, lr 2e-3: every picture check passes (400 did not; README)
    micro_batch: int = 16
    learning_rate: float = 2e-3
    ablation: tuple[str, ...] = ("label",)  # conditionings trained beside description+joint
    gen_steps: int = 20
    guidance: float = 3.0                  # measured best for keeping the scene (README); > 1 as the checks need
    image_guidance: float = 1.5
    max_new_tokens: int = 48
    seed: int = 0
    progress: bool = True


MAIN = "description+joint"
# The tiny VLLM is asked one of its tuning questions: a 128-wide LLaVA does not carry what it
# learned over to a paraphrase it never saw (the authors' inference question is the default for
# real models; `--question` sets it on enrich / generate / evaluate).
DEMO_QUESTION = "How do I {action} in this scene? Describe the hands, the objects and the movement."


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
            write_atomic(marker, json.dumps(result, indent=1, default=str))
        self.artefacts.update({f"{name}: {k}": str(v) for k, v in result.items()
                               if isinstance(v, (str, Path)) and k not in ("table", "example")})
        return result

    @property
    def world(self):
        from lego_core.kit.world_data import WorldConfig

        return WorldConfig(clips=self.cfg.clips, test_clips=self.cfg.test_clips, seed=self.cfg.seed,
                           place_margin=self.cfg.place_margin)

    # -- data ------------------------------------------------------------------------------------

    def make_source(self) -> dict:
        from lego_core.kit.world_data import make_world

        return make_world(self.path("source"), self.world, workers=2)

    def extract(self, source: dict) -> dict:
        from lego_core.data.extract import ExtractConfig, extract

        for dataset, name, annotation_file, videos, boxes in (
            ("epic-kitchens", "epic", source["epic_csv"], source["epic_videos"], source["epic_boxes"]),
            ("ego4d", "ego4d", source["ego4d_json"], source["ego4d_videos"], None),
        ):
            extract(ExtractConfig(dataset=dataset, annotations=annotation_file, videos=videos, boxes=boxes, size=0,
                                  quality=95, out=str(self.path("shards", "extracted", f"{name}-%06d.tar"))),
                    progress=self.cfg.progress)
        return {"shards": str(self.path("shards", "extracted"))}

    def split(self, extracted: dict, source: dict) -> dict:
        """Held out by clip, so no layout is on both sides; never seen by either model."""
        from lego_core.data.shards import ShardWriter, iter_samples

        test_videos = set(json.loads(Path(source["split"]).read_text())["test_videos"])
        samples = sorted(iter_samples([extracted["shards"]]), key=lambda s: s["__key__"])
        out = {}
        for part in ("train", "test"):
            with ShardWriter(str(self.path("shards", "split", f"{part}-%06d.tar"))) as w:
                n = 0
                for s in samples:
                    if (json.loads(s["meta.json"])["video_id"] in test_videos) == (part == "test"):
                        w.write(s)
                        n += 1
            out[part] = str(self.path("shards", "split", f"{part}-000000.tar"))
            out[f"{part}_samples"] = n
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

    # -- models ----------------------------------------------------------------------------------

    def models(self) -> dict:
        """The tiny starting points (what real users download: LLaVA, SD-1.5): the kit's LLaVA aligned
        to the world (`kit/llava_align.py`: it can say where a named object is, as LLaVA-1.5 can
        in photos), and a random SD whose VAE is fitted next."""
        import shutil

        from lego_core.kit import make_tiny_sd
        from lego_core.kit.llava_align import WORLD_LLAVA

        m = self.path("models")
        r = self.cfg.resolution
        factor = 2 ** (len(self.cfg.vae_channels) - 1)
        sd = make_tiny_sd(m / "sd-base", sample_size=r // factor, unet_block_out_channels=self.cfg.unet_channels,
                          cross_attention_dim=32, vae_block_out_channels=self.cfg.vae_channels, seed=self.cfg.seed,
                          prediction_type=self.cfg.prediction_type)
        llava = shutil.copytree(WORLD_LLAVA, m / "llava-base", dirs_exist_ok=True)
        return {"llava": str(llava), "sd": str(sd)}

    def fit_vae(self, curated: dict, models: dict) -> dict:
        """SD's VAE is trained; the kit's is fitted to the world's training frames here, then its
        held-out round trip is measured."""
        from lego_core.kit.vae_fit import fit_vae

        return {"vae": fit_vae(models["sd"], _frames(curated["train"]), _frames(curated["test"]),
                               size=self.cfg.resolution, steps=self.cfg.vae_steps, seed=self.cfg.seed,
                               progress=self.cfg.progress)}

    def tune(self, curated: dict, models: dict, n_train: int) -> dict:
        from lego_core.engine.config import EngineOptions
        from lego_core.vllm.tune import TuneConfig, tune

        run = self.path("runs", "llava")
        model = tune(TuneConfig(shards=[curated["train"]], vllm=models["llava"], out=str(run),
                                epochs=self.cfg.tune_epochs, learning_rate=self.cfg.tune_lr, workers=0,
                                gradient_checkpointing=False, train_vision_tower=self.cfg.tune_vision_tower,
                                checkpoint_every=10 ** 6, seed=self.cfg.seed,
                                progress=self.cfg.progress,
                                engine=EngineOptions(micro_batch=min(16, n_train), grad_accum=1, zero_stage=2,
                                                     precision="fp32")))
        return {"vllm": str(model), "run": str(run)}

    def enrich(self, curated: dict, tuned: dict) -> dict:
        from lego_core.vllm.enrich import EnrichConfig, enrich

        out = {}
        for part in ("train", "test"):
            pattern = str(self.path("shards", "enriched", f"{part}-%06d.tar"))
            enrich(EnrichConfig(shards=[curated[part]], vllm=tuned["vllm"], out=pattern, batch_size=16,
                                question=DEMO_QUESTION,
                                max_new_tokens=self.cfg.max_new_tokens, greedy=True, seed=self.cfg.seed,
                                device="cpu", num_shards=1, shard_index=0), progress=self.cfg.progress)
            out[part] = pattern.replace("%06d", "000000")
        return out

    def train(self, enriched: dict, models: dict, conditioning: str, n_train: int) -> dict:
        from lego_core.diffusion.latents import cache_for_run
        from lego_core.diffusion.train import TrainConfig, train
        from lego_core.engine.config import EngineOptions

        c = self.cfg
        run = self.path("runs", "lego-" + conditioning.replace("+", "-"))
        latents = cache_for_run([enriched["train"]], models["sd"], str(run), c.resolution, False, progress=c.progress)
        model = train(TrainConfig(
            shards=latents, out=str(run), base=models["sd"], conditioning=conditioning, resolution=c.resolution,
            max_steps=c.train_steps, learning_rate=c.learning_rate, workers=0, checkpoint_every=c.train_steps,
            cached_latents=True, flip=False, ema=False, seed=c.seed, progress=c.progress, val_steps=c.gen_steps,
            # a small world (the reduced test) has fewer pairs than a micro-batch
            engine=EngineOptions(micro_batch=max(1, min(c.micro_batch, n_train)), grad_accum=1, zero_stage=2,
                                 precision="fp32")))
        return {"model": str(model), "run": str(run)}

    def side_by_side(self, jobs: dict[str, tuple[str, tuple]], shown: str) -> dict[str, dict]:
        """Stages that do not need each other, `name: (Demo method, args)`, the unfinished ones in
        parallel processes, one per CPU core (tiny models use a second thread poorly: two side by
        side take about the time of one). Only `shown`'s progress bar is drawn."""
        todo = {n: job for n, job in jobs.items() if not (self.done_dir / f"{n}.json").is_file()}
        results = self.in_children(todo, shown)
        done = {n: self.stage(n, lambda n=n: results[n]) for n in jobs}
        for n in results:   # the stage timed a dict lookup; report the work's own time
            self.timings[n] = results[n]["seconds"]
        return done

    def in_children(self, jobs: dict[str, tuple[str, tuple]], shown: str | None) -> dict[str, dict]:
        """`name: (Demo method, args)` → `name: result` (with its "seconds"), in spawned processes
        on a share of the cores each; in this process when there are fewer than two jobs or cores."""
        import os
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        workers = min(len(jobs), os.cpu_count() or 1)
        if workers < 2:
            return {n: _timed(self, method, args) for n, (method, args) in jobs.items()}
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {n: pool.submit(_method_in_child, self.cfg, n == shown, threads, method, args)
                       for n, (method, args) in jobs.items()}
            return {n: f.result() for n, f in futures.items()}

    # -- evidence ----------------------------------------------------------------------------------

    def evaluate(self, source: dict, enriched: dict, trained: dict[str, dict], tuned: dict, models: dict) -> dict:
        from lego_core.demo_report import write_learning_report

        jobs = {cond: ("measure_model", (source, enriched, t["model"], tuned)) for cond, t in trained.items()}
        jobs["vllm"] = ("vllm_scores", (source, enriched, tuned, models))
        results = self.in_children(jobs, None)
        vllm = results.pop("vllm")["scores"]
        rows = {cond: results[cond]["result"] for cond in trained}
        out = self.path("eval")
        summary = write_learning_report(out, self.cases(source, enriched), rows, vllm, models.get("vae"), main=MAIN,
                                        test_shards=[enriched["test"]])
        return {"report": str(out / "report.html"), "metrics": str(out / "metrics.json"), **summary}

    def cases(self, source: dict, enriched: dict) -> list:
        from lego_core import evidence

        return evidence.read_cases([enriched["test"]], _scenes(source["split"]), _verbs_for())

    def measure_model(self, source: dict, enriched: dict, model: str, tuned: dict) -> dict:
        """The held-out evidence of one trained model: true and wrong actions, generated and scored."""
        from lego_core import evidence

        c = self.cfg
        result = evidence.measure(self.cases(source, enriched), _generator(model, tuned["vllm"], c), seed=c.seed,
                                  round_trip=evidence.vae_round_trip(model, c.resolution))
        return {"result": result}

    def vllm_scores(self, source: dict, enriched: dict, tuned: dict, models: dict) -> dict:
        """What the tuned VLLM's held-out descriptions get right, beside the untuned one's and a blank image's."""
        from lego_core import evidence

        cases = self.cases(source, enriched)
        ask = dict(max_new_tokens=self.cfg.max_new_tokens, question=DEMO_QUESTION)
        return {"scores": {
            "tuned": evidence.vllm_description_scores(tuned["vllm"], cases, **ask),
            "untuned": evidence.vllm_description_scores(models["llava"], cases, **ask),
            "tuned, blank image": evidence.vllm_description_scores(tuned["vllm"], cases, blank=True, **ask)}}

    # -- the whole run ---------------------------------------------------------------------------

    def run(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "demo-config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        source = self.stage("source", self.make_source)
        extracted = self.stage("extract", lambda: self.extract(source))
        split = self.stage("split", lambda: self.split(extracted, source))
        curated = self.stage("curate", lambda: self.curate(split))
        models = self.stage("models", self.models)
        n_train = split["train_samples"]
        first = self.side_by_side({"fit-vae": ("fit_vae", (curated, models)),
                                   "tune-vllm": ("tune", (curated, models, n_train))}, shown="tune-vllm")
        models = {**models, "vae": first["fit-vae"]["vae"]}
        tuned = first["tune-vllm"]
        enriched = self.stage("enrich", lambda: self.enrich(curated, tuned))
        trained = self.side_by_side({_train_stage(c): ("train", (enriched, models, c, n_train))
                                     for c in (MAIN, *self.cfg.ablation)}, shown=_train_stage(MAIN))
        trained = {c: trained[_train_stage(c)] for c in (MAIN, *self.cfg.ablation)}
        evaluated = self.stage("evaluate", lambda: self.evaluate(source, enriched, trained, tuned, models))
        return {"out": str(self.root), "artefacts": self.artefacts, "table": evaluated["table"],
                "passed": evaluated["passed"], "report": evaluated["report"], "seconds": self.timings}


def run_demo(cfg: DemoConfig) -> dict:
    return Demo(cfg).run()


def _train_stage(conditioning: str) -> str:
    return f"train-{conditioning.replace('+', '-')}"


def _timed(demo: Demo, method: str, args: tuple) -> dict:
    t = time.perf_counter()
    result = getattr(demo, method)(*args)
    return {**result, "seconds": round(time.perf_counter() - t, 1)}


def _method_in_child(cfg: DemoConfig, progress: bool, threads: int, method: str, args: tuple) -> dict:
    """A `Demo` method in a worker process of `Demo.in_children`, on its share of the cores."""
    import dataclasses

    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    return _timed(Demo(dataclasses.replace(cfg, progress=cfg.progress and progress)), method, args)


# -- helpers -----------------------------------------------------------------------------------------


def _frames(shard: str) -> list:
    """Every input and action frame of a shard, as arrays (the VAE's training / held-out set)."""
    import io

    import numpy as np
    from PIL import Image

    from lego_core.data.shards import iter_samples

    return [np.asarray(Image.open(io.BytesIO(s[k])).convert("RGB")) for s in iter_samples([shard])
            for k in ("input.jpg", "target.jpg")]


def _scenes(split_file: str) -> dict[str, list[str]]:
    return {vid: list(objs) for vid, objs in json.loads(Path(split_file).read_text())["scenes"].items()}


def _verbs_for():
    """The verbs that make sense for a noun in the world (a door: open and close)."""
    from lego_core.kit.world import OBJECTS

    return lambda noun, verb: OBJECTS[noun][3] if noun in OBJECTS else ()


def _generator(model: str, vllm: str, c: DemoConfig):
    """cases, labels, seeds → action frames of the cases' input frames, through `lego generate`'s
    batched generator; a model that uses VLLM embeddings gets them from the VLLM describing each
    (true or wrong) action."""
    from lego_core.diffusion.build import folder_conditioning
    from lego_core.diffusion.generate import ActionFrameGenerator, GenerateOptions, Request

    # a label model is prompted with the label; every other one with the VLLM's description
    vllm = vllm if folder_conditioning(model) != "label" else None
    gen = ActionFrameGenerator(model, vllm=vllm, options=GenerateOptions(
        steps=c.gen_steps, size=c.resolution, guidance=c.guidance, image_guidance=c.image_guidance, seed=c.seed,
        device="cpu", greedy=True, max_new_tokens=c.max_new_tokens, progress=False, batch_size=12,
        question=DEMO_QUESTION))

    def generate(cases, labels, seeds):
        requests = [Request(c.input, lab, seed=s) for c, lab, s in zip(cases, labels, seeds)]
        return [g.images[0] for g in gen.run(requests)]
    return generate

