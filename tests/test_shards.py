"""Shard I/O: finding shards, atomic writing, resuming, sequential reading, the training pipeline."""

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from lego_core.data import shards as SH
from lego_core.data.shards.writer import _tar_size
from lego_core.data.inspect import format_inspection, inspect_shards
from lego_core.data.schema import decode_npy, make_key
from lego_core.errors import BadInput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jpeg(seed=0, size=16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def sample(i: int, dataset="ego4d", size=16) -> dict:
    m = {
        "dataset": dataset, "video_id": f"v{i // 10}", "action_id": str(i), "label": "open drawer",
        "verb": "open", "noun": "drawer", "t_input": 1.0, "t_target": 1.5, "fps": 30.0,
        "width": 640, "height": 480, "boxes": [{"kind": "hand", "box": [0.1, 0.2, 0.3, 0.4]}],
    }
    return {
        "__key__": make_key(dataset, m["video_id"], m["action_id"]),
        "input.jpg": jpeg(2 * i, size),
        "target.jpg": jpeg(2 * i + 1, size),
        "meta.json": m,
    }


def write(pattern, n, start=0, **kw):
    with SH.ShardWriter(pattern, **kw) as w:
        for i in range(start, start + n):
            w.write(sample(i))
    return w


def tar_count(path) -> int:
    """Samples in a tar read with plain tarfile; fails on an incomplete archive."""
    with tarfile.open(path) as t:
        names = t.getnames()
    assert len(names) % 3 == 0
    return len(names) // 3


# --- finding shards -------------------------------------------------------------------------


def test_expand_shards(tmp_path):
    write(str(tmp_path / "d-%06d.tar"), 4, max_samples=1)
    d = str(tmp_path)
    paths = [str(tmp_path / f"d-{i:06d}.tar") for i in range(4)]
    assert SH.expand_shards(d + "/d-{000000..000003}.tar") == paths
    assert SH.expand_shards(d + "/d-*.tar") == paths
    assert SH.expand_shards(d) == paths
    assert SH.expand_shards([paths[2], d + "/d-00000[01].tar", paths[2]]) == [paths[2], paths[0], paths[1]]
    with pytest.raises(BadInput, match="d-000004.tar"):
        SH.expand_shards(d + "/d-{000000..000005}.tar")
    with pytest.raises(BadInput, match="no shards match"):
        SH.expand_shards(d + "/e-*.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no .tar shards in folder"):
        SH.expand_shards(str(tmp_path / "empty"))
    with pytest.raises(BadInput, match="no shards given"):
        SH.expand_shards([])


def test_patterns_and_listing(tmp_path):
    assert SH.format_shard("o/s-%06d.tar", 7) == "o/s-000007.tar"
    assert SH.format_shard("o/s-{i:04d}.tar", 7) == "o/s-0007.tar"
    assert SH.format_shard("o/s-{}.tar", 7) == "o/s-7.tar"
    assert SH.format_shard("o/all.tar", 7) == "o/all.tar"
    with pytest.raises(BadInput, match="%06d"):
        SH.ShardWriter("o/s-{000000..000009}.tar")
    w = write(str(tmp_path / "all.tar"), 5, max_samples=2)  # no placeholder: one file, no limits
    assert w.counts == {str(tmp_path / "all.tar"): 5}
    assert SH.finished_shards(str(tmp_path / "all.tar")) == w.shards
    os.remove(w.shards[0])
    assert SH.shard_pattern(str(tmp_path)) == str(tmp_path / "shard-%06d.tar")
    pattern = str(tmp_path / "x-{i:03d}.tar")
    assert SH.finished_shards(pattern) == [] and SH.next_index(pattern) == 0
    write(pattern, 5, max_samples=2, start_index=8)
    (tmp_path / ".x-011.tar.tmp-999999").write_bytes(b"partial")
    (tmp_path / "y-001.tar").write_bytes(b"")
    assert [os.path.basename(p) for p in SH.finished_shards(pattern)] == ["x-008.tar", "x-009.tar", "x-010.tar"]
    assert SH.next_index(pattern) == 11


# --- writing --------------------------------------------------------------------------------


def test_writer_rolls_over_at_max_samples(tmp_path):
    w = write(str(tmp_path / "s-%06d.tar"), 7, max_samples=3)
    assert [os.path.basename(p) for p in w.shards] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert list(w.counts.values()) == [3, 3, 1] and w.total == 7
    assert [tar_count(p) for p in w.shards] == [3, 3, 1]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    keys = [s["__key__"] for s in SH.iter_samples(w.shards)]
    assert keys == [sample(i)["__key__"] for i in range(7)]
    assert SH.read_keys(str(tmp_path)) == set(keys)


def test_writer_rolls_over_at_max_size(tmp_path):
    one = sum(_tar_size(len(SH.encode_value(k, v))) for k, v in sample(0, size=64).items() if k != "__key__")
    with SH.ShardWriter(str(tmp_path / "s-%06d.tar"), max_size=int(2.5 * one)) as w:
        for i in range(5):
            w.write(sample(i, size=64))
    assert list(w.counts.values()) == [2, 2, 1]
    for p in w.shards:
        assert os.path.getsize(p) <= 2.5 * one + 10240  # plus the tar end-of-archive padding
    # a sample larger than max_size gets a shard of its own instead of failing
    w = write(str(tmp_path / "t-%06d.tar"), 3, max_size=10)
    assert list(w.counts.values()) == [1, 1, 1]


def test_writer_encodes_values_and_round_trips_float16(tmp_path):
    a = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float16)
    s = sample(0)
    s.update({"vllm_img.npy": a, "vllm_txt.npy": a[:2], "curated.txt": "désolé", "__url__": "dropped"})
    write_to = str(tmp_path / "s-%06d.tar")
    with SH.ShardWriter(write_to) as w:
        w.write(s)
        with pytest.raises(ValueError, match="__key__"):
            w.write({"input.jpg": b"x"})
        with pytest.raises(ValueError, match="__key__ contains"):
            w.write({"__key__": "a.b", "input.jpg": b"x"})
    (got,) = list(SH.iter_samples(w.shards, require=["vllm_img.npy", "curated.txt"]))
    b = decode_npy(got["vllm_img.npy"])
    assert b.dtype == np.float16 and np.array_equal(a, b)
    assert got["curated.txt"].decode() == "désolé"
    assert json.loads(got["meta.json"])["label"] == "open drawer"
    assert got["__url__"] == w.shards[0]


def test_long_keys_survive_tar_and_webdataset(tmp_path):
    # Ego4D uids make member names longer than USTAR's 100 bytes: the writer uses PAX headers.
    s = sample(0)
    uid = "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
    s["meta.json"].update(video_id=uid, action_id=uid + "_pre_15")
    s["__key__"] = make_key("ego4d", uid, uid + "_pre_15")
    s["input_latent.npy"] = np.zeros((4, 2, 2), np.float16)
    s["target_latent.npy"] = np.zeros((8, 2, 2), np.float16)
    with SH.ShardWriter(str(tmp_path / "s-%d.tar")) as w:
        w.write(s)
    assert len(s["__key__"] + ".target_latent.npy") > 100
    assert [x["__key__"] for x in SH.iter_samples(w.shards)] == [s["__key__"]]
    assert [x["__key__"] for x in SH.make_dataset(w.shards, shuffle=0)] == [s["__key__"]]


def test_writer_is_reproducible_and_lazy(tmp_path):
    a, b = write(str(tmp_path / "a-%d.tar"), 3), write(str(tmp_path / "b-%d.tar"), 3)
    with open(a.shards[0], "rb") as fa, open(b.shards[0], "rb") as fb:
        assert fa.read() == fb.read()
    w = write(str(tmp_path / "c-%d.tar"), 0)
    assert w.shards == [] and not list(tmp_path.glob("c-*"))


def test_exception_inside_writer_leaves_only_complete_shards(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    with pytest.raises(RuntimeError):
        with SH.ShardWriter(pattern, max_samples=2) as w:
            for i in range(5):
                w.write(sample(i))
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["s-000000.tar", "s-000001.tar"]
    assert [tar_count(p) for p in w.shards] == [2, 2]


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_incomplete_final_shard(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    child = textwrap.dedent(
        f"""
        import itertools, sys
        sys.path.insert(0, {REPO!r}); sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_shards import sample
        from lego_core.data.shards import ShardWriter
        w = ShardWriter({pattern!r}, max_samples=4)
        for i in itertools.count():   # writes until killed
            w.write(sample(i % 50, size=64))
            if i == 9:
                print("ready", flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    finals = SH.finished_shards(pattern)
    assert len(finals) >= 2
    assert all(tar_count(f) == 4 for f in finals)  # every final shard is complete
    temps = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert temps == [f".s-{len(finals):06d}.tar.tmp-{p.pid}"]
    assert SH.clean_partial(pattern) == [str(tmp_path / temps[0])]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(f) for f in finals]
    # a resumed run skips finished keys and continues after the last index
    done, start = SH.prepare_output(pattern)
    assert start == len(finals) and len(done) == min(4 * len(finals), 50)


def test_clean_partial_keeps_live_writers_temps(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    mine = tmp_path / f".s-000003.tar.tmp-{os.getpid()}"
    mine.write_bytes(b"x")
    other = tmp_path / ".t-000003.tar.tmp-1"
    other.write_bytes(b"x")
    assert SH.clean_partial(pattern) == []
    assert mine.exists() and other.exists()


def test_prepare_output_overwrite(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    write(pattern, 3, max_samples=1)
    done, start = SH.prepare_output(pattern)
    assert len(done) == 3 and start == 3
    assert SH.prepare_output(pattern, overwrite=True) == (set(), 0)
    assert os.listdir(tmp_path) == []


# --- reading --------------------------------------------------------------------------------


def _truncate(path, frac=0.6):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * frac)])


def test_iter_samples_skips_invalid_and_truncated(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    with SH.ShardWriter(pattern, max_samples=4) as w:
        for i in range(12):
            s = sample(i, size=64)
            if i == 1:
                s["meta.json"]["t_target"] = 0.5
            if i == 2:
                del s["target.jpg"]
            w.write(s)
    _truncate(w.shards[1])  # shard 1 (samples 4..7) loses its tail
    stats = SH.SkipStats(rejects=tmp_path / "rejects.jsonl")
    keys = [s["__key__"] for s in SH.iter_samples(str(tmp_path), stats=stats)]
    first = [sample(i)["__key__"] for i in (0, 3)]
    last = [sample(i)["__key__"] for i in range(8, 12)]
    assert keys[:2] == first and keys[-4:] == last and 6 <= len(keys) < 10
    assert stats.counts["meta.json: t_input is after t_target"] == 1
    assert stats.counts["target.jpg is missing"] == 1
    assert stats.counts[SH.CORRUPT] == 1 and stats.total == 3
    assert "skipped 3 samples" in stats.summary()
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects][:2] == ["meta.json: t_input is after t_target", "target.jpg is missing"]
    # require: samples lacking a needed field are skipped too
    stats = SH.SkipStats()
    assert list(SH.iter_samples(w.shards[0], require=["curated.txt"], stats=stats)) == []
    assert stats.counts["curated.txt is missing"] == 3  # sample 2 counts under target.jpg
    # validate=False yields everything readable
    assert len(list(SH.iter_samples(w.shards[0], validate=False))) == 4
    with pytest.raises(BadInput, match="cannot read shard"):
        SH.read_keys(w.shards[1])


def test_inspect_reports(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    with SH.ShardWriter(pattern, max_samples=3) as w:
        for i in range(5):
            s = sample(i, dataset="ego4d" if i < 3 else "epic-kitchens")
            if i == 4:
                s["meta.json"]["fps"] = -1
            else:
                s["vllm_img.npy"] = np.zeros((2, 4), np.float16)
            w.write(s)
    r = inspect_shards(str(tmp_path))
    assert r["shards"] == 2 and r["samples"] == 5 and r["valid"] == 4
    assert r["fields"] == {"input.jpg": 5, "target.jpg": 5, "meta.json": 5, "vllm_img.npy": 4}
    assert r["datasets"] == {"ego4d": 3, "epic-kitchens": 2}
    assert r["problems"] == {"meta.json: fps is not a positive number": 1}
    assert r["first"]["meta"]["label"] == "open drawer"
    assert r["first"]["fields"]["vllm_img.npy"] == {"shape": [2, 4], "dtype": "float16"}
    assert r["bytes"] == sum(os.path.getsize(p) for p in w.shards)
    json.dumps(r)
    text = format_inspection(r)
    assert "2 shard(s), 5 sample(s)" in text and "fps is not a positive number" in text
    _truncate(w.shards[0], 0.5)
    r = inspect_shards(w.shards, full=True)
    assert r["problems"].get(SH.CORRUPT) == 1 and r["corrupt_shards"][0]["shard"] == w.shards[0]
    assert "corrupt shard" in format_inspection(r)


# --- the training pipeline ------------------------------------------------------------------


@pytest.fixture
def four_shards(tmp_path):
    w = write(str(tmp_path / "s-%06d.tar"), 12, max_samples=3)
    return w.shards


def _run(ds):
    return [(s["__key__"], s["__url__"]) for s in ds]


def test_make_dataset_splits_ranks_disjointly(four_shards, monkeypatch):
    monkeypatch.delenv("WORKER", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        got[rank] = _run(SH.make_dataset(four_shards, shuffle=5, seed=3))
        again = _run(SH.make_dataset(four_shards, shuffle=5, seed=3))
        assert got[rank] == again  # same seed and epoch, same order
    keys = [{k for k, _ in got[r]} for r in (0, 1)]
    urls = [{u for _, u in got[r]} for r in (0, 1)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 12
    assert not urls[0] & urls[1] and urls[0] | urls[1] == set(four_shards)
    # and the same for DataLoader workers within a rank
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("NUM_WORKERS", "2")
    seen = []
    for worker in (0, 1):
        monkeypatch.setenv("WORKER", str(worker))
        seen.append({k for k, _ in _run(SH.make_dataset(four_shards, seed=3))})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12


def test_make_dataset_epochs_and_too_many_ranks(four_shards, monkeypatch):
    ds = SH.make_dataset(four_shards, shuffle=12, seed=1)
    e0, e1 = _run(ds), _run(ds)
    assert sorted(e0) == sorted(e1) and e0 != e1  # each pass is a new epoch
    ds.set_epoch(0)
    assert _run(ds) == e0
    assert _run(SH.make_dataset(four_shards, shuffle=0)) == sorted(e0,
                                                                   key=lambda kv: (kv[1], int(kv[0].rsplit("-", 1)[1])))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(BadInput, match="4 shard"):
        SH.make_dataset(four_shards)


def test_make_dataset_resampled_goes_beyond_one_pass(four_shards):
    ds = SH.make_dataset(four_shards, resample=True, shuffle=4)
    got = [s["__key__"] for s in itertools.islice(ds, 40)]
    assert len(got) == 40 and set(got) <= {sample(i)["__key__"] for i in range(12)}


def test_make_dataset_skips_bad_samples_and_shards(tmp_path):
    pattern = str(tmp_path / "s-%06d.tar")
    with SH.ShardWriter(pattern, max_samples=4) as w:
        for i in range(8):
            s = sample(i, size=64)
            if i == 0:
                s["meta.json"] = b"{oops"
            w.write(s)
    _truncate(w.shards[1])
    stats = SH.SkipStats()
    keys = [s["__key__"] for s in SH.make_dataset(w.shards, shuffle=0, stats=stats)]
    assert keys[:3] == [sample(i)["__key__"] for i in (1, 2, 3)] and len(keys) < 7
    assert stats.counts["meta.json: not valid JSON"] == 1
    assert stats.counts[SH.CORRUPT] >= 1


def test_atomic_writer_leaves_nothing_on_failure_and_sweeps_dead_temps(tmp_path):
    from lego_core.atomic import atomic_file, remove_stale_temps, write_atomic

    final = tmp_path / "out" / "a.json"
    with pytest.raises(RuntimeError):
        with atomic_file(final) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    write_atomic(final, "done\r\n")
    assert final.read_bytes() == b"done\r\n"                         # newlines as given
    dead, live = tmp_path / "out" / ".a.json.tmp-999999999", tmp_path / "out" / f".b.json.tmp-{os.getpid()}"
    dead.write_text("x"), live.write_text("x")
    assert remove_stale_temps(tmp_path / "out") == [str(dead)]
    assert live.exists()


def test_shard_map_pairs_each_input_with_its_output(tmp_path):
    inputs = [str(tmp_path / f"in-{i}.tar") for i in range(3)]
    layout = SH.ShardMap(inputs, str(tmp_path / "out") + "/")
    assert [os.path.basename(p) for p in layout.outputs] == [f"shard-{i:06d}.tar" for i in range(3)]
    with pytest.raises(BadInput, match="names one file"):
        SH.ShardMap(inputs, str(tmp_path / "one.tar"))
    with pytest.raises(BadInput, match="overwrite an input shard"):
        SH.ShardMap(inputs[:1], inputs[0])
