"""The engine both trainers share: resuming from an older checkpoint, a --deepspeed file's batch
settings, its "auto" check, SLURM launch detection and node lists."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from lego_core.engine import checkpoint as ckpt
from lego_core.engine.config import EngineOptions, deepspeed_config, engine_config, plain_engine_on_one_rank
from lego_core.engine.launch import detect_launch, slurm_head_node
from lego_core.errors import BadInput

FAST = ["--workers", "0", "--precision", "fp32"]
TRAIN = [*FAST, "--resolution", "64", "--batch-size", "2", "--grad-accum", "1", "--conditioning", "description",
         "--no-ema"]
TUNE = [*FAST, "--batch-size", "2", "--grad-accum", "1", "--zero", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from lego_core.kit import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("sd"), sample_size=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The bundled samples with what `lego enrich` and `lego curate` add (random embeddings), so
    both trainers read them."""
    from lego_core.data.shards import ShardWriter, iter_samples

    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    with ShardWriter(str(out / "s-%06d.tar"), max_samples=6) as w:
        for s in iter_samples([str(REPO / "shards")]):
            meta = json.loads(s["meta.json"])
            s = {k: v for k, v in s.items() if not k.startswith("__url")}
            s["enriched.txt"] = s["curated.txt"] = f"Hold the {meta['noun'] or 'object'} and {meta['label']}."
            s["vllm_img.npy"] = rng.standard_normal((4, 16)).astype(np.float16)
            s["vllm_txt.npy"] = rng.standard_normal((5, 16)).astype(np.float16)
            w.write(s)
    return out


@pytest.fixture(scope="module")
def llava(tiny_llava) -> Path:
    return tiny_llava


def events(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def steps_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step-"))


def deepspeed_steps(checkpoint: Path) -> int:
    """How many optimizer steps DeepSpeed had taken when it saved `checkpoint`."""
    return torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["global_steps"]


# ---------------------------------------------------------------------------------------------
# 1. Resuming from an older checkpoint


@pytest.mark.parametrize("kind", ["train", "tune-vllm"])
def test_resume_from_an_older_checkpoint_moves_the_newer_ones_aside(kind, shards, tmp_path, request, caplog):
    """--resume step-1 while step-2 and step-3 exist: the run trains on from step 1, saves its own
    step-2/step-3 (no collision, keep-K keeps them), the abandoned ones are kept under
    checkpoints/superseded/, and the next auto-resume continues the new line."""
    run = tmp_path / "run"
    if kind == "train":
        args = ["-q", "train", str(shards), "--base", str(request.getfixturevalue("base")), "--out", str(run), *TRAIN]
    else:
        args = ["-q", "tune-vllm", str(shards), "--vllm", str(request.getfixturevalue("llava")), "--out", str(run),
                *TUNE]
    first = run_cli(*args, "--max-steps", "3", "--checkpoint-every", "1", "--keep-checkpoints", "3")
    assert first.exit_code == 0, first.output
    ckpts = run / "checkpoints"
    assert steps_in(ckpts) == ["step-00000001", "step-00000002", "step-00000003"]
    for name in ("step-00000002", "step-00000003"):
        (ckpts / name / "old-line").write_text("x")         # marks the abandoned line's checkpoints

    with caplog.at_level(logging.WARNING, logger="lego.engine"):
        again = run_cli(*args, "--max-steps", "3", "--checkpoint-every", "1", "--keep-checkpoints", "2",
                        "--resume", ckpts / "step-00000001")
    assert again.exit_code == 0, again.output
    assert "moved step-00000002, step-00000003" in caplog.text
    assert steps_in(ckpts) == ["step-00000002", "step-00000003"]
    assert not list(ckpts.glob("step-*/old-line"))             # the run's own, newly saved
    aside = list((ckpts / "superseded").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("after-step-00000001-")
    assert steps_in(aside[0]) == ["step-00000002", "step-00000003"]
    assert len(list(aside[0].glob("step-*/old-line"))) == 2
    assert (aside[0] / "step-00000003" / "lego-state.json").is_file()
    log = events(run)
    resume = [e for e in log if e.get("event") == "resume"]
    assert resume[-1]["step"] == 1 and log[-1]["event"] == "done" and log[-1]["steps_run"] == 2

    onward = run_cli(*args, "--max-steps", "4", "--checkpoint-every", "1", "--keep-checkpoints", "2")
    assert onward.exit_code == 0, onward.output
    resume = [e for e in events(run) if e.get("event") == "resume"]
    assert resume[-1]["step"] == 3 and resume[-1]["checkpoint"] == str(ckpts / "step-00000003")
    assert steps_in(ckpts) == ["step-00000003", "step-00000004"]
    assert len(list((ckpts / "superseded").iterdir())) == 1     # nothing else moved, nothing deleted


def test_resume_must_be_a_finished_checkpoint_and_survive_overwrite(base, shards, tmp_path):
    """(The error comes after the process group starts: torch may log a line before it here.)"""
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    bad = run_cli("train", str(shards), "--base", base, "--out", run, *TRAIN, "--max-steps", "1",
                  "--resume", run / "checkpoints" / "step-00000002")
    assert bad.exit_code == 2 and "not a finished checkpoint" in bad.stderr.strip().splitlines()[-1]
    (run / "checkpoints" / "step-00000002" / "lego-state.json").write_text('{"step": 2}')
    bad = run_cli("train", str(shards), "--base", base, "--out", run, *TRAIN, "--max-steps", "1", "--overwrite",
                  "--resume", run / "checkpoints" / "step-00000002")
    assert bad.exit_code == 2 and "which --overwrite removes" in bad.stderr.strip().splitlines()[-1]
    assert (run / "checkpoints" / "step-00000002" / "lego-state.json").is_file()


class FakeEngine:
    """DeepSpeed's save_checkpoint as far as the folder layout goes."""

    def save_checkpoint(self, folder, tag, client_state, save_latest):
        (Path(folder) / tag).mkdir(parents=True, exist_ok=True)
        (Path(folder) / tag / "mp_rank_00_model_states.pt").write_text("new")


def test_save_over_an_existing_checkpoint_moves_it_aside_and_keeps_the_new_one(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    for step in (1000, 2000, 3000):
        ckpt.save_checkpoint(FakeEngine(), folder, step, {"epoch": 0}, rank=0, keep=3)
    (folder / "step-00002000" / "mp_rank_00_model_states.pt").write_text("old")
    with caplog.at_level(logging.WARNING, logger="lego.engine"):
        final = ckpt.save_checkpoint(FakeEngine(), folder, 2000, {"epoch": 1}, rank=0, keep=1)
    assert "already existed" in caplog.text
    assert final == folder / "step-00002000" and (final / "mp_rank_00_model_states.pt").read_text() == "new"
    # keep-K never deletes what it has just saved, though a stray step-3000 sorts after it
    assert steps_in(folder) == ["step-00002000", "step-00003000"]
    (moved,) = (folder / "superseded").iterdir()
    assert (moved / "step-00002000" / "mp_rank_00_model_states.pt").read_text() == "old"


def test_supersede_newer_only_moves_later_finished_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(FakeEngine(), folder, step, {}, rank=0, keep=0)
    assert ckpt.supersede_newer(folder, folder / "step-00000003") is None       # the newest: nothing to do
    other = tmp_path / "elsewhere"                                              # another run's checkpoint
    ckpt.save_checkpoint(FakeEngine(), other, 2, {}, rank=0, keep=0)
    dest = ckpt.supersede_newer(folder, other / "step-00000002")
    assert steps_in(folder) == ["step-00000001", "step-00000002"] and steps_in(dest) == ["step-00000003"]
    assert ckpt.latest_checkpoint(folder) == folder / "step-00000002"          # superseded/ is not a checkpoint
    ckpt.sweep_partial(folder)
    assert (dest / "step-00000003" / "lego-state.json").is_file()              # nor swept as a partial one


# ---------------------------------------------------------------------------------------------
# 2. A --deepspeed file's batch settings win over the flags


def write(path: Path, config: dict) -> str:
    path.write_text(json.dumps(config))
    return str(path)


def test_engine_config_takes_the_files_batch_and_says_so(tmp_path, caplog):
    ds = write(tmp_path / "ds.json", {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4,
                                      "train_batch_size": 99, "zero_optimization": {
                                          "stage": 3, "offload_optimizer": {"device": "cpu"}}})
    opts = EngineOptions(micro_batch=8, grad_accum=1, zero_stage=2, deepspeed_config=ds)
    with caplog.at_level(logging.WARNING, logger="lego.engine"):
        config = engine_config(opts, 2)
    assert (opts.micro_batch, opts.grad_accum, opts.zero_stage, opts.offload_optimizer) == (1, 4, 3, True)
    assert config["train_micro_batch_size_per_gpu"] == 1 and "train_batch_size" not in config
    assert "micro_batch 8 -> 1" in caplog.text and "grad_accum 1 -> 4" in caplog.text
    assert "train_batch_size 99 ignored" in caplog.text and "= 8" in caplog.text
    # what the file leaves out still comes from the flags
    opts = EngineOptions(micro_batch=8, grad_accum=2, deepspeed_config=write(tmp_path / "z.json", {}))
    assert engine_config(opts, 1)["gradient_accumulation_steps"] == 2 and (opts.micro_batch, opts.grad_accum) == (8, 2)
    for bad in (0, "2", 1.5, True):
        with pytest.raises(BadInput, match="gradient_accumulation_steps must be an integer"):
            deepspeed_config(EngineOptions(deepspeed_config=write(tmp_path / "b.json", {
                "gradient_accumulation_steps": bad})), 1)


def test_train_steps_by_the_files_accumulation(base, shards, tmp_path, caplog):
    """Flags say 2 per step, no accumulation; the file says 1 per step, accumulate 2: each of the
    loop's steps is one DeepSpeed optimizer step, and the checkpoints land on its boundaries."""
    ds = write(tmp_path / "ds.json", {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
                                      "zero_optimization": {"stage": 2}, "steps_per_print": 10 ** 9})
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="lego.engine"):
        r = run_cli("-q", "train", str(shards), "--base", base, "--out", run, *TRAIN, "--max-steps", "2",
                    "--checkpoint-every", "1", "--deepspeed", ds, "--record-keys", "--shuffle-buffer", "0")
    assert r.exit_code == 0, r.output
    assert "micro_batch 2 -> 1, grad_accum 1 -> 2" in caplog.text
    for step in (1, 2):
        assert deepspeed_steps(run / "checkpoints" / f"step-{step:08d}") == step
    keys = [line.split()[0] for line in (run / "keys-rank0.txt").read_text().splitlines()]
    assert keys == ["1", "1", "2", "2"]                        # 2 micro-batches of 1 sample per step
    config = json.loads((run / "train-config.json").read_text())
    assert (config["engine"]["micro_batch"], config["engine"]["grad_accum"]) == (1, 2)


def test_tune_vllm_steps_by_the_files_accumulation(llava, shards, tmp_path):
    ds = write(tmp_path / "ds.json", {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
                                      "zero_optimization": {"stage": 2}, "steps_per_print": 10 ** 9})
    run = tmp_path / "run"
    r = run_cli("-q", "tune-vllm", str(shards), "--vllm", llava, "--out", run, *TUNE, "--max-steps", "1",
                "--deepspeed", ds)
    assert r.exit_code == 0, r.output
    assert deepspeed_steps(run / "checkpoints" / "step-00000001") == 1
    config = json.loads((run / "tune-config.json").read_text())
    assert (config["engine"]["micro_batch"], config["engine"]["grad_accum"]) == (1, 2)


# ---------------------------------------------------------------------------------------------
# 3. "auto" values, and only those


@pytest.mark.parametrize("world, opts, plain", [
    (1, EngineOptions(zero_stage=2, precision="fp32"), True),
    (1, EngineOptions(zero_stage=1, precision="fp32"), True),
    (2, EngineOptions(zero_stage=2, precision="fp32"), False),            # something to partition
    (1, EngineOptions(zero_stage=2, precision="bf16"), False),            # ZeRO's mixed precision
    (1, EngineOptions(zero_stage=2, precision="fp32", offload_optimizer=True), False),
    (1, EngineOptions(zero_stage=3, precision="fp32"), False),
])
def test_one_rank_fp32_runs_the_plain_engine_unless_zero_does_something(world, opts, plain):
    config = deepspeed_config(opts, world)
    assert plain_engine_on_one_rank(config, opts, world) is plain
    assert (config["zero_optimization"] == {"stage": 0}) is plain


def test_a_deepspeed_file_keeps_its_zero_on_one_rank(tmp_path):
    opts = EngineOptions(deepspeed_config=write(tmp_path / "ds.json", {"zero_optimization": {"stage": 2}}))
    config = deepspeed_config(opts, 1)
    assert not plain_engine_on_one_rank(config, opts, 1) and config["zero_optimization"]["stage"] == 2


def test_one_rank_trains_without_zero_and_still_resumes_a_zero_checkpoint(base, shards, tmp_path):
    """--zero 2 on one rank in fp32: the plain engine (no ZeRO files in the checkpoint). A run
    checkpointed under ZeRO-2 (here by a --deepspeed file) resumes under ZeRO-2 with the same flags:
    its optimizer state is in ZeRO's files, which the plain engine cannot read."""
    plain = tmp_path / "plain"
    r = run_cli("-q", "train", str(shards), "--base", base, "--out", plain, *TRAIN, "--max-steps", "1", "--zero", "2")
    assert r.exit_code == 0, r.output
    assert json.loads((plain / "train-config.json").read_text())["resolved"]["deepspeed"]["zero_optimization"] == \
        {"stage": 0}
    assert not list((plain / "checkpoints" / "step-00000001").glob("zero_pp_rank_*"))

    run = tmp_path / "run"
    ds = write(tmp_path / "ds.json", {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                                      "zero_optimization": {"stage": 2}, "steps_per_print": 10 ** 9})
    assert run_cli("-q", "train", str(shards), "--base", base, "--out", run, *TRAIN, "--max-steps", "1",
                   "--deepspeed", ds).exit_code == 0
    assert list((run / "checkpoints" / "step-00000001").glob("zero_pp_rank_*"))
    r = run_cli("-q", "train", str(shards), "--base", base, "--out", run, *TRAIN, "--max-steps", "2", "--zero", "2")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "train-config.json").read_text())["resolved"]["deepspeed"]["zero_optimization"] == \
        {"stage": 2}
    assert deepspeed_steps(run / "checkpoints" / "step-00000002") == 2


def test_adamw_is_fused_where_torch_has_the_kernel():
    from lego_core.engine.optim import adamw

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert adamw(params, "cpu", lr=1e-4).defaults["fused"] is True
    assert adamw(params, torch.device("cuda", 1), lr=1e-4).defaults["fused"] is True
    assert not adamw(params, "mps", lr=1e-4).defaults["fused"]


def test_only_auto_values_are_refused_naming_the_key(tmp_path):
    fine = {"autotuning": {"enabled": False}, "zero_optimization": {"stage": 3, "offload_param": {
        "device": "nvme", "nvme_path": "/scratch/auto/nvme"}}, "comment": "autotune later", "tags": ["autos"]}
    config = deepspeed_config(EngineOptions(deepspeed_config=write(tmp_path / "fine.json", fine)), 1)
    assert config["autotuning"] == {"enabled": False}
    for bad, where in (({"zero_optimization": {"stage": "auto"}}, "zero_optimization.stage"),
                       ({"train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"}},
                        "train_micro_batch_size_per_gpu is \"auto\" (and 1 more)"),
                       ({"optimizer": {"params": {"betas": ["auto", 0.999]}}}, "optimizer.params.betas[0]")):
        with pytest.raises(BadInput) as e:
            deepspeed_config(EngineOptions(deepspeed_config=write(tmp_path / "bad.json", bad)), 1)
        assert where in str(e.value) and "\n" not in str(e.value)


def test_auto_value_exits_2_with_one_line(tmp_path):
    ds = write(tmp_path / "ds.json", {"gradient_clipping": "auto"})
    r = run_cli("tune-vllm", str(REPO / "shards"), "--vllm", tmp_path, "--out", tmp_path / "run", "--deepspeed", ds)
    assert r.exit_code == 2 and "gradient_clipping is \"auto\"" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# 4, 5. SLURM


def test_sbatch_batch_step_is_one_process_srun_tasks_are_ranks(caplog):
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "12345",
             "SLURM_JOB_NODELIST": "gpu[01-04]", "SLURM_NNODES": "4"}
    with caplog.at_level(logging.WARNING, logger="lego.engine"):
        assert detect_launch(batch).launcher == "single"
    assert "not an srun task" in caplog.text
    for step in ("batch", "extern", "interactive", "4294967291", "4294967292", "", "-5"):
        assert detect_launch({**batch, "SLURM_STEP_ID": step}).launcher == "single", step
    srun = {**batch, "SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
            "SLURM_STEP_NODELIST": "gpu[02-03]"}
    d = detect_launch(srun)
    assert (d.launcher, d.rank, d.world_size, d.local_rank, d.master_addr) == ("slurm", 9, 16, 1, "gpu02")
    legacy = {k: v for k, v in srun.items() if k != "SLURM_STEP_ID"} | {"SLURM_STEPID": "3"}
    assert detect_launch(legacy).launcher == "slurm"


@pytest.mark.parametrize("nodelist, head", [
    ("gpu[01-03,07],cpu5", "gpu01"),
    ("node[1-2]-ib", "node1-ib"),
    ("rack[1-2]-node[01-04]", "rack1-node01"),
    ("rack[3,1-2]-node[007-009],x1", "rack3-node007"),
    ("gpu-a100-[001-004]", "gpu-a100-001"),
    ("a,b", "a"),
    ("single", "single"),
    (" gpu[01-03] ", "gpu01"),
])
def test_slurm_head_node(nodelist, head):
    assert slurm_head_node(nodelist) == head


@pytest.mark.parametrize("nodelist", ["", "gpu[01-03", "gpu01]", "a[[1]]", ",a"])
def test_slurm_head_node_refuses_what_it_cannot_read(nodelist):
    with pytest.raises(ValueError):
        slurm_head_node(nodelist)


# ---------------------------------------------------------------------------------------------
# 4. Each rank resumes at its own data position

class FakeLoadingEngine(FakeEngine):
    def load_checkpoint(self, folder, tag):
        return None, {"lego": {}}


def test_each_rank_saves_and_loads_its_own_data_position(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    final = ckpt.save_checkpoint(FakeLoadingEngine(), folder, 9, {}, rank=0, keep=0,
                                 position={"epoch": 1, "batches_in_epoch": 3})
    # rank 1's file, as the second rank of a 1-rank world would not write it: by hand
    (final / "data-rank1.json").write_text(json.dumps({"rank": 1, "world_size": 1, "epoch": 2,
                                                       "batches_in_epoch": 1}))
    assert json.loads((final / "lego-state.json").read_text()) == {"step": 9, "world_size": 1}
    state = ckpt.load_checkpoint(FakeLoadingEngine(), final, rank=0)
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (9, 1, 3)
    assert ckpt.data_position(final, rank=1, world_size=1) == {"epoch": 2, "batches_in_epoch": 1}
    assert not caplog.records
    # another world size: every rank starts the epoch after the latest any rank was in, with a warning
    with caplog.at_level(logging.WARNING, logger="lego.engine"):
        assert ckpt.data_position(final, rank=0, world_size=2) == {"epoch": 3, "batches_in_epoch": 0}
        assert ckpt.data_position(final, rank=3, world_size=2) == {"epoch": 3, "batches_in_epoch": 0}
    assert "saved by 1 rank(s), this run has 2" in caplog.text and "no data position for rank 3" in caplog.text
    # a checkpoint from before per-rank positions (rank 0's in lego-state.json only)
    (final / "data-rank0.json").unlink()
    (final / "data-rank1.json").unlink()
    (final / "lego-state.json").write_text(json.dumps({"step": 9, "epoch": 4, "batches_in_epoch": 2}))
    state = ckpt.load_checkpoint(FakeLoadingEngine(), final, rank=0)
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (9, 5, 0)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """The enriched samples in shards of 10, 2, 8 and 2: without shuffling rank 0 reads 18 samples
    an epoch (shards 0 and 2), rank 1 only 4 (shards 1 and 3), so at one step they are at different
    epochs and batches."""
    from lego_core.data.shards import ShardWriter, iter_samples

    out = tmp_path_factory.mktemp("uneven")
    samples = []
    for s in iter_samples([str(REPO / "shards")]):
        meta = json.loads(s["meta.json"])
        s = {k: v for k, v in s.items() if not k.startswith("__url")}
        s["enriched.txt"] = f"Hold the {meta['noun'] or 'object'} and {meta['label']}."
        samples.append(s)
    assert len(samples) == 22
    start = 0
    for i, n in enumerate((10, 2, 8, 2)):
        with ShardWriter(str(out / f"u{i}-%06d.tar"), max_samples=n) as w:
            for s in samples[start:start + n]:
                w.write(s)
        start += n
    return out


@pytest.mark.slow
def test_two_ranks_resume_each_at_its_own_data_position(base, uneven, tmp_path):
    """Stopped at step 3 (rank 0 at epoch 0 batch 3 of 9, rank 1 at epoch 1 batch 1 of 2) and
    resumed, each rank trains on exactly the samples an uninterrupted run does."""
    import os
    import subprocess
    import sys

    from lego_core.engine.launch import free_port

    def train(run: Path, steps: int):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "lego_cli.main", "-q", "train", str(uneven), "--base", str(base),
               "--out", str(run), *map(str, TRAIN), "--max-steps", str(steps), "--checkpoint-every", "3",
               "--record-keys", "--shuffle-buffer", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]

    train(tmp_path / "whole", 6)
    train(tmp_path / "resumed", 3)
    positions = [json.loads((tmp_path / "resumed" / "checkpoints" / "step-00000003" / f"data-rank{r}.json")
                            .read_text()) for r in (0, 1)]
    assert [(p["epoch"], p["batches_in_epoch"], p["world_size"]) for p in positions] == [(0, 3, 2), (1, 1, 2)]
    train(tmp_path / "resumed", 6)
    resume = [e for e in events(tmp_path / "resumed") if e.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 3
    for r in (0, 1):
        whole = (tmp_path / "whole" / f"keys-rank{r}.txt").read_text().splitlines()
        resumed = (tmp_path / "resumed" / f"keys-rank{r}.txt").read_text().splitlines()
        assert len(whole) == 6 * 2 and resumed == whole, r
