"""`lego curate` end to end against a real HTTP server on 127.0.0.1 (tests/curate_server.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import LEGO, REPO, run_cli, run_lego
from curate_server import FakeLLM, good_answer
from lego_core.curate import checks
from lego_core.curate.cache import AnswerCache, request_hash
from lego_core.curate.client import RetryPolicy, parse_retry_after, redact, register_secret
from lego_core.curate.prompts import EXAMPLES, build_messages, load_examples
from lego_core.curate.run import CurateConfig, make_request
from lego_core.data.shards import ShardWriter, iter_samples
from lego_core.errors import BadInput

BUNDLED = REPO / "shards"
SECRET = "sk-test-DO-NOT-LEAK-5f2c9a7e1b"
VERBS = ["cut", "wash", "open", "close", "stir", "pour", "wipe", "fold", "peel", "rinse"]
NOUNS = ["onion", "plate", "drawer", "cup", "pan", "towel", "bowl", "lid", "carrot", "spoon", "jar", "board"]
FAST = ["--retry-base-delay", "0.01", "--retry-max-delay", "0.05", "--timeout", "5"]


def bundled() -> list[dict]:
    return list(iter_samples(str(BUNDLED)))


def make_shards(folder: Path, n: int, *, per_shard: int = 10, bad: dict[int, dict] | None = None) -> tuple[str, dict]:
    """n samples with unique labels (so the server can tell them apart), built from the bundled ones.
    Returns (shard glob, key -> meta). ``bad`` replaces meta fields of some samples (invalid input)."""
    base = bundled()
    folder.mkdir(parents=True, exist_ok=True)
    metas = {}
    with ShardWriter(str(folder / "in-%06d.tar"), max_samples=per_shard) as w:
        for i in range(n):
            src = base[i % len(base)]
            meta = json.loads(src["meta.json"])
            verb, noun = VERBS[i % len(VERBS)], NOUNS[(i // len(VERBS)) % len(NOUNS)]
            meta.update(action_id=f"{meta['action_id']}-c{i}", verb=verb, noun=noun, label=f"{verb} {noun}")
            if i >= len(VERBS) * len(NOUNS):
                meta["label"] += f" {i}"
            meta.update((bad or {}).get(i, {}))
            key = f"{meta['dataset']}-{meta['video_id']}-{meta['action_id']}".replace(".", "_")
            w.write({"__key__": key, "input.jpg": src["input.jpg"], "target.jpg": src["target.jpg"], "meta.json": meta})
            metas[key] = meta
    return str(folder / "in-*.tar"), metas


def query_of(meta: dict) -> str:
    return build_messages(meta["label"], meta.get("boxes") or [])[-1]["content"]


def read_out(folder: Path, prefix: str = "cur-") -> list[tuple[str, dict]]:
    """(key, {field: bytes}) in order over the finished output shards (duplicates kept)."""
    out = []
    for path in sorted(folder.glob(f"{prefix}*.tar")):
        with tarfile.open(path) as tar:
            cur = None
            for m in tar.getmembers():
                key, field = m.name.split(".", 1)
                if cur is None or cur[0] != key:
                    cur = (key, {})
                    out.append(cur)
                cur[1][field] = tar.extractfile(m).read()
    return out


def read_in(pattern: str) -> dict[str, dict]:
    return {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("_")}
            for s in iter_samples(pattern, validate=False)}


@pytest.fixture
def llm():
    with FakeLLM() as server:
        yield server


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return {"OPENAI_API_KEY": SECRET, "NO_PROXY": "127.0.0.1,localhost"}


def curate(*args, llm=None):
    base = ["curate", *map(str, args), *FAST]
    if llm is not None:
        base += ["--base-url", llm.url, "--llm", "fake-model"]
    return run_cli("-q", *base)


# --- end to end ---------------------------------------------------------------------------------


def test_every_sample_once_concurrently_fields_kept_and_tokens_counted(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 30)
    llm.latency = 0.05        # so that requests overlap
    r = curate(pattern, "--out", tmp_path / "out" / "cur-%06d.tar", "--concurrency", "4",
               "--max-samples-per-shard", "7", "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 30 and s["skipped_total"] == 0 and s["requests"] == 30 and not s["stopped"]
    out = read_out(tmp_path / "out")
    assert [k for k, _ in out] == list(metas)                   # every sample once, input order
    inputs = read_in(pattern)
    for key, fields in out:
        assert set(fields) == {"input.jpg", "target.jpg", "meta.json", "curated.txt"}
        for name, data in inputs[key].items():
            assert fields[name] == data                          # byte-identical
        assert fields["curated.txt"].decode() == good_answer(metas[key]["label"])
    assert all(llm.requests[query_of(m)] == 1 for m in metas.values()) and llm.total == 30
    assert 1 < llm.max_in_flight <= 4
    assert all(b["model"] == "fake-model" and b["seed"] == 0 for b in llm.bodies)
    prompt = sum(sum(len(m["content"].split()) for m in b["messages"]) for b in llm.bodies)
    completion = sum(len(good_answer(m["label"]).split()) for m in metas.values())
    assert (s["prompt_tokens"], s["completion_tokens"]) == (prompt, completion)
    cache = (tmp_path / "out" / "cur.curate-cache.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in cache) == sorted(metas)
    # a rerun asks for nothing and writes nothing new
    llm.reset_counts()
    r = curate(pattern, "--out", tmp_path / "out" / "cur-%06d.tar", "--json", llm=llm)
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.exit_code == 0 and llm.total == 0 and s["already_done"] == 30 and s["written"] == 0
    # --overwrite rewrites the shards from the cache: still nothing asked, same bytes
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("cur-*.tar")}
    r = curate(pattern, "--out", tmp_path / "out" / "cur-%06d.tar", "--overwrite", "--max-samples-per-shard", "7",
               "--json", llm=llm)
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.exit_code == 0 and llm.total == 0 and s["from_cache"] == 30
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("cur-*.tar")} == before


def test_retries_429_5xx_timeouts_malformed_dropped(tmp_path, llm, env, caplog):
    pattern, metas = make_shards(tmp_path / "in", 8)
    labels = [m["label"] for m in metas.values()]
    plan = {labels[0]: ["429", "429", "ok"], labels[1]: ["500", "ok"], labels[2]: ["slow", "ok"],
            labels[3]: ["malformed", "ok"], labels[4]: ["drop", "ok"], labels[5]: ["503", "nousage"]}
    for label, how in plan.items():
        llm.script(label, how)
    llm.retry_after, llm.slow_seconds = "0.2", 2.0
    caplog.set_level(logging.DEBUG, logger="lego.curate")
    r = run_cli("-q", "curate", pattern, "--out", f"{tmp_path / 'out'}/", "--concurrency", "3", "--json",
                "--base-url", llm.url, "--retry-base-delay", "0.01", "--timeout", "0.5")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 8 and s["retries"] == 7 and s["requests"] == 15
    assert s["responses_without_usage"] == 1
    for m in metas.values():
        assert llm.requests[query_of(m)] == len(plan.get(m["label"], ["ok"]))
    assert len(read_out(tmp_path / "out", "shard-")) == 8
    assert "(Retry-After)" in caplog.text and "retry 1 in 0.2" in caplog.text   # the server's wait was used


def test_failing_checks_are_asked_again_then_rejected(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 6)
    labels = [m["label"] for m in metas.values()]
    llm.script(labels[0], ["refusal", "ok"])
    llm.script(labels[1], ["refusal", "empty", "offtopic"])
    llm.script(labels[2], ["400"])
    r = curate(pattern, "--out", tmp_path / "out" / "cur-%06d.tar", "--max-attempts", "3", "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 4 and s["skipped_total"] == 2
    rejects = [json.loads(x) for x in (tmp_path / "out" / "cur.curate-rejects.jsonl").read_text().splitlines()]
    by_key = {x["key"]: x for x in rejects}
    keys = list(metas)
    assert by_key[keys[1]]["reason"] == "answer failed the checks: not about the action"
    assert by_key[keys[2]]["reason"] == "request refused (HTTP 400)"
    assert llm.requests[query_of(metas[keys[0]])] == 2 and llm.requests[query_of(metas[keys[1]])] == 3
    written = dict(read_out(tmp_path / "out"))
    assert keys[0] in written and keys[1] not in written


def test_a_server_refusing_every_request_exits_2_not_0(tmp_path, llm, env):
    # what OpenAI answers for every request when an option does not fit the model (e.g. 400
    # "Unsupported parameter: 'max_tokens'"): it is the configuration, not 12 bad samples
    pattern, metas = make_shards(tmp_path / "in", 12)
    out = tmp_path / "out" / "cur-%06d.tar"
    llm.default = "400"
    p = run_lego("-q", "curate", pattern, "--out", out, "--base-url", llm.url, "--concurrency", "1", *FAST, env=env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and SECRET not in p.stderr + p.stdout
    assert "refused the first 5 requests (HTTP 400) and accepted none" in p.stderr
    assert '"context length exceeded"' in p.stderr and "check --llm" in p.stderr    # the server's words, what to do
    assert llm.total == 5                                         # stops asking at once
    # once the configuration is fixed, a rerun does the whole set (nothing was written or cached)
    llm.default = "ok"
    r = curate(pattern, "--out", out, "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 12 and s["skipped_total"] == 0 and s["already_done"] == 0


def test_a_short_run_refused_throughout_exits_2_and_a_refusal_after_an_answer_is_one_sample(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 3)
    llm.default = "400"
    r = curate(pattern, "--out", tmp_path / "a" / "cur-%06d.tar", llm=llm)
    assert r.exit_code == 2 and 'refused all 3 requests (HTTP 400) and accepted none: "context length' in r.stderr
    assert llm.total == 3
    # one answer accepted first: the server takes the request, so later 400s are those samples' own
    pattern, metas = make_shards(tmp_path / "in8", 8)
    llm.script(next(iter(metas.values()))["label"], ["ok"])
    r = curate(pattern, "--out", tmp_path / "b" / "cur-%06d.tar", "--concurrency", "1", "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 1 and s["skipped"] == {"request refused (HTTP 400)": 7}


def test_one_bad_sample_is_skipped_counted_and_rejected(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 5,
                                 bad={2: {"label": "  "}, 3: {"boxes": [{"kind": "nose", "box": [0, 0, 1, 1]}]}})
    r = curate(pattern, "--out", tmp_path / "out" / "cur-%06d.tar", "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 3 and s["skipped_total"] == 2 and llm.total == 3
    rejects = [json.loads(x) for x in (tmp_path / "out" / "cur.curate-rejects.jsonl").read_text().splitlines()]
    assert sorted(x["reason"] for x in rejects) == sorted(["meta.json: label is empty",
                                                          "meta.json: a box has an unknown kind (want one of "
                                                          "left_hand, right_hand, hand, "
                                                          "object, object_of_change, tool)"])


def test_api_key_is_never_printed_logged_or_written(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 6)
    out = tmp_path / "out"
    outputs = []
    # a good run with every log on, then a run the server rejects while echoing the key back
    p = run_lego("--debug", "curate", pattern, "--out", out / "cur-%06d.tar", "--base-url", llm.url, *FAST, env=env)
    assert p.returncode == 0, p.stderr
    outputs += [p.stdout, p.stderr]
    llm.default = "401"
    p = run_lego("-q", "curate", pattern, "--out", out / "b-%06d.tar", "--base-url", llm.url, *FAST, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "rejected the API key" in p.stderr
    outputs += [p.stdout, p.stderr]
    p = run_lego("--debug", "curate", pattern, "--out", out / "c-%06d.tar", "--base-url", llm.url, *FAST, env=env)
    assert p.returncode != 0 and "Traceback" in p.stderr        # --debug: the full traceback, still no key
    outputs += [p.stdout, p.stderr]
    p = run_lego("curate", pattern, "--dry-run", "--json", "--out", out / "cur-%06d.tar", env=env)
    outputs += [p.stdout, p.stderr]
    assert f"Bearer {SECRET}" in llm.authorizations          # the key was used...
    for text in outputs:
        assert SECRET not in text                                # ...but never shown
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert any(f.name == "cur.curate-cache.jsonl" for f in files) and any(f.name == "cur.curate.json" for f in files)
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    assert redact(f"Incorrect API key provided: {SECRET}") == "Incorrect API key provided: ***"


def test_dry_run_sends_nothing_and_writes_nothing(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 3)
    out = tmp_path / "out"
    r = curate(pattern, "--out", out / "cur-%06d.tar", "--dry-run", llm=llm)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("=== ") == 3 and "[system]" in r.stdout and "Boxes:" in r.stdout
    assert r.stdout.count("[assistant]") == 3 * len(EXAMPLES)
    r = curate(pattern, "--out", out / "cur-%06d.tar", "--dry-run", "--json", llm=llm)
    reqs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["key"] for x in reqs] == list(metas) and not any(x["cached"] for x in reqs)
    assert llm.total == 0 and not out.exists()


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path, env):
    pattern, metas = make_shards(tmp_path / "in", 40)
    out = tmp_path / "out"
    cache_file = out / "cur.curate-cache.jsonl"
    with FakeLLM(latency=0.15) as llm:
        args = [LEGO, "-q", "curate", pattern, "--out", str(out / "cur-%06d.tar"), "--base-url", llm.url,
                "--concurrency", "2", "--max-samples-per-shard", "5", *FAST]
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if cache_file.exists() and cache_file.read_text().count("\n") >= 12:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        cached = {json.loads(x)["key"] for x in cache_file.read_text().splitlines() if x.endswith("}")}
        assert 12 <= len(cached) < 40
        before = dict(llm.requests)
        p = run_lego("curate", pattern, "--out", out / "cur-%06d.tar", "--base-url", llm.url, "--json", *FAST, env=env)
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout.strip().splitlines()[-1])
        for key in cached:                                       # no request repeated for a cached answer
            q = query_of(metas[key])
            assert llm.requests[q] == before[q]
        assert all(llm.requests[query_of(m)] >= 1 for m in metas.values())
    keys = [k for k, _ in read_out(out)]
    assert sorted(keys) == sorted(metas) and len(keys) == 40     # complete, each sample once
    assert s["from_cache"] + s["requests"] >= 40 - s["already_done"]
    assert not list(out.glob(".*tmp*"))


def test_budgets_stop_cleanly_and_a_rerun_continues(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 8)
    out = tmp_path / "out" / "cur-%06d.tar"
    r = curate(pattern, "--out", out, "--max-requests", "3", "--concurrency", "1", "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 3 and s["requests"] == 3 and "--max-requests 3" in s["stopped"] and s["remaining"] == 5
    assert llm.total == 3 and "stopped early" in r.stderr
    r = curate(pattern, "--out", out, "--max-tokens-total", "1", "--concurrency", "1", "--json", llm=llm)
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 1 and "--max-tokens-total" in s["stopped"] and llm.total == 4
    r = curate(pattern, "--out", out, "--json", llm=llm)
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 4 and s["already_done"] == 4 and not s["stopped"]
    assert llm.total == 8 and all(llm.requests[query_of(m)] == 1 for m in metas.values())


def test_server_down_ends_the_run_keeping_answers(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 6)
    labels = [m["label"] for m in metas.values()]
    llm.script(labels[3], ["500"] * 3)
    out = tmp_path / "out" / "cur-%06d.tar"
    r = curate(pattern, "--out", out, "--max-retries", "2", "--concurrency", "1", llm=llm)
    assert r.exit_code == 1 and "HTTP 500 on 3 tries" in r.stderr and "rerun" in r.stderr
    assert len(read_out(tmp_path / "out")) == 3
    r = curate(pattern, "--out", out, "--json", llm=llm)
    assert r.exit_code == 0
    assert llm.total == 3 + 3 + 3 and all(llm.requests[query_of(m)] == (4 if m["label"] == labels[3] else 1)
                                          for m in metas.values())


def test_bad_input_exits_2_with_one_line(tmp_path, env, monkeypatch):
    pattern, _ = make_shards(tmp_path / "in", 2)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    no_desc = tmp_path / "nodesc.json"
    no_desc.write_text(json.dumps([{"label": "cut onion", "boxes": []}]))
    cases = [
        (["curate", str(tmp_path / "nope-{000..003}.tar"), "--out", str(tmp_path / "o/")], "shard not found"),
        (["curate", str(tmp_path / "empty-dir"), "--out", str(tmp_path / "o/")], "shard not found"),
        (["curate", pattern, "--out", str(tmp_path / "o/"), "--examples", str(bad_json)], "not valid JSON"),
        (["curate", pattern, "--out", str(tmp_path / "o/"), "--examples", str(no_desc)], "'description' is missing"),
        (["curate", pattern, "--out", str(tmp_path / "o/"), "--examples", str(tmp_path / "x.json")], "file not found"),
        (["curate", pattern], "--out PATTERN is required"),
        (["curate", pattern, "--out", str(tmp_path / "in" / "in-%06d.tar")], "names the input shards"),
        (["curate", pattern, "--out", str(tmp_path / "o/"), "--concurrency", "0"], "--concurrency must be >= 1"),
    ]
    for args, what in cases:
        p = run_lego(*args, env=env)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and what in p.stderr, (args, p.stderr)
    p = run_lego("curate", pattern, "--out", tmp_path / "o/", env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    assert p.returncode == 2 and "OPENAI_API_KEY is not set" in p.stderr


def test_own_examples_file_round_trips_and_is_sent(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 2)
    r = run_cli("curate", "--show-examples")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["examples"]) == len(EXAMPLES) >= 6
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps([{"label": "water plant", "boxes": [{"kind": "tool", "name": "watering can",
                                                                     "box": [0.5, 0.2, 0.8, 0.6]}],
                                 "description": "The person tips the watering can over the basil pot."}]))
    r = curate(pattern, "--out", tmp_path / "out" / "cur-%06d.tar", "--examples", mine, llm=llm)
    assert r.exit_code == 0, r.output
    for body in llm.bodies:
        assert len(body["messages"]) == 4 and body["messages"][1]["content"].startswith("Action: water plant")
    cfg = json.loads((tmp_path / "out" / "cur.curate.json").read_text())
    assert cfg["examples_source"] == str(mine) and cfg["examples_count"] == 1


def test_template_backend_offline(tmp_path):
    r = run_cli("-q", "curate", BUNDLED, "--out", f"{tmp_path / 'demo'}/", "--backend", "template", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 22 and s["requests"] == 0 and s["cache_file"] is None
    from lego_core.curate.template import split_label, third_person

    for key, fields in read_out(tmp_path / "demo", "shard-"):
        meta = json.loads(fields["meta.json"])
        verb, noun = split_label(meta["label"], meta.get("noun", ""))
        text = fields["curated.txt"].decode()
        assert f"{third_person(verb)} the {noun}" in text and "In the end" in text, (meta["label"], text)
    help_text = run_cli("curate", "--help").output
    assert "NOT the paper's method" in help_text and "lego curate" in help_text


# --- units --------------------------------------------------------------------------------------


def test_prompt_without_boxes_has_no_box_lines():
    with_boxes = build_messages("cut onion", [{"kind": "tool", "name": "knife", "box": [0.1, 0.2, 0.3, 0.4]}])
    without = build_messages("cut onion", [])
    assert 'tool "knife": [0.10, 0.20, 0.30, 0.40]' in with_boxes[-1]["content"]
    assert len(with_boxes) == len(without) == 2 + 2 * len(EXAMPLES)
    assert not any("Boxes:" in m["content"] or "[0." in m["content"] for m in without)
    assert "boxes [x0, y0, x1, y1]" in with_boxes[0]["content"] and "x0" not in without[0]["content"]
    assert len({ex.label.split()[-1] for ex in EXAMPLES}) >= 6


def test_request_hash_covers_model_messages_and_sampling():
    meta = {"label": "cut onion", "boxes": []}
    base = CurateConfig(inputs=[], out="x")
    h = request_hash(make_request(base, meta, load_examples_default()))
    for change in ({"temperature": 0.1}, {"llm": "other"}, {"max_tokens": 10}, {"seed": 1}):
        cfg = CurateConfig(inputs=[], out="x", **change)
        assert request_hash(make_request(cfg, meta, load_examples_default())) != h
    assert request_hash(make_request(CurateConfig(inputs=[], out="y", concurrency=3), meta,
                                     load_examples_default())) == h


def load_examples_default():
    from lego_core.curate.prompts import default_prompts

    return default_prompts()


def test_cache_drops_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "c.jsonl"
    with AnswerCache(path) as c:
        c.add("k1", "h1", "text one")
    with open(path, "a") as f:
        f.write('{"key": "k2", "request": "h2", "te')
    with AnswerCache(path) as c:
        assert c.get("k1", "h1")["text"] == "text one" and c.get("k2", "h2") is None
        c.add("k3", "h3", "text three")
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["k1", "k3"]


def test_cache_entry_without_text_is_a_miss_never_an_answer(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    lines = [{"key": "k1", "request": "h", "text": "text one"},
             {"key": "k2", "request": "h", "text": None},
             {"key": "k3", "request": "h", "text": 7},
             {"key": "k4", "request": "h"},
             {"key": "k5", "request": "h", "text": "   "},
             ["k6", "h", "text"],
             {"key": "k1", "request": "h", "text": None}]   # must not replace the good k1
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    caplog.set_level(logging.WARNING, logger="lego.curate")
    with AnswerCache(path) as c:
        assert c.bad_lines == 6 and len(c) == 1 and c.get("k1", "h")["text"] == "text one"
        assert all(c.get(k, "h") is None for k in ("k2", "k3", "k4", "k5"))
        before = path.read_bytes()
        for bad in (None, "", 3):
            with pytest.raises(ValueError):
                c.add("k9", "h", bad)
        assert path.read_bytes() == before and c.get("k9", "h") is None     # nothing written
    assert "ignored 6 unreadable or invalid line(s)" in caplog.text


def test_a_cached_null_answer_is_asked_again_not_a_crash(tmp_path, llm, env):
    pattern, metas = make_shards(tmp_path / "in", 3)
    out = tmp_path / "out" / "cur-%06d.tar"
    assert curate(pattern, "--out", out, llm=llm).exit_code == 0
    cache_file = tmp_path / "out" / "cur.curate-cache.jsonl"
    entries = [json.loads(x) for x in cache_file.read_text().splitlines()]
    broken = entries[1]["key"]
    entries[1]["text"] = None
    cache_file.write_text("".join(json.dumps(e) + "\n" for e in entries))
    r = curate(pattern, "--out", out, "--dry-run", "--json", llm=llm)
    assert {x["key"]: x["cached"] for x in map(json.loads, r.stdout.splitlines())} == {k: k != broken for k in metas}
    llm.reset_counts()
    r = curate(pattern, "--out", out, "--overwrite", "--json", llm=llm)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["written"] == 3 and s["from_cache"] == 2 and llm.total == 1 and llm.requests[query_of(metas[broken])] == 1
    assert dict(read_out(tmp_path / "out"))[broken]["curated.txt"].decode() == good_answer(metas[broken]["label"])


def test_checks():
    ok = "The person cuts the onion on the board with the knife held in the right hand."
    assert checks.check_response(ok, "cut onion") == (ok, None)
    assert checks.check_response(f'Description: "{ok}"', "cut onion") == (ok, None)
    assert checks.check_response("", "cut onion")[1] == checks.EMPTY
    assert checks.check_response("I'm sorry, I can't do that for you right now, sorry.",
                                 "cut onion")[1] == checks.REFUSAL
    assert checks.check_response(ok, "cut onion", refusal="no")[1] == checks.REFUSAL
    assert checks.check_response("Cuts onion.", "cut onion")[1] == checks.TOO_SHORT
    assert checks.check_response(" ".join(["onion"] * 200), "cut onion")[1] == checks.TOO_LONG
    assert checks.check_response(ok, "cut onion", finish_reason="length")[1] == checks.TRUNCATED
    assert checks.check_response("The weather is sunny today with a breeze over the hills.",
                                 "cut onion")[1] == checks.OFF_TOPIC
    assert checks.about_action("She is washing the dishes in the sink now.", "wash plate")


def test_retry_after_and_backoff():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=0) > 1e9
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
    p = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=10.0)
    for retry in range(8):
        cap = min(10.0, 2.0 ** retry)
        assert cap / 2 <= p.delay(retry) <= cap
    assert 7.0 <= p.delay(0, retry_after=7.0) <= 8.0
    assert p.delay(0, retry_after=10_000) <= p.max_retry_after + 1
    register_secret("sk-abcdefgh12345678")
    assert "abcdefgh" not in redact("key sk-abcdefgh12345678 and sk-proj-zzzzzzzzzz")
    assert "zzzzzzzz" not in redact("sk-proj-zzzzzzzzzz")


def test_retry_after_http_date_is_utc_whatever_the_local_zone():
    import email.utils

    now = 1_700_000_000.0
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"        # UTC-5: a date read as local time is 5 hours off
    time.tzset()
    try:
        assert time.timezone != 0
        # "-0000" (what email.utils.formatdate writes) makes parsedate_to_datetime return a naive
        # datetime: it is UTC, not local time
        minus0 = email.utils.formatdate(now + 30)
        assert minus0.endswith("-0000")
        assert parse_retry_after({"retry-after": minus0}, now=now) == pytest.approx(30)
        assert parse_retry_after({"retry-after": email.utils.formatdate(now + 30, usegmt=True)},
                                 now=now) == pytest.approx(30)
        assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:50 +0000"}, now=now) == pytest.approx(30)
        assert parse_retry_after({"retry-after": "Wed, 15 Nov 2023 00:13:50 +0200"}, now=now) == pytest.approx(30)
        assert parse_retry_after({"retry-after": email.utils.formatdate(now - 60)}, now=now) == 0.0   # past: no wait
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()
    for junk in ("nan", "inf", "-inf", "Mon, 99 Foo 2023 99:99:99 GMT"):
        assert parse_retry_after({"retry-after": junk}) is None, junk
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0
    assert 0.5 <= RetryPolicy(base_delay=1.0).delay(0, retry_after=float("nan")) <= 1.0       # backoff instead


def test_examples_file_validation(tmp_path):
    f = tmp_path / "e.json"
    f.write_text(json.dumps({"examples": [{"label": "x", "description": "y",
                                           "boxes": [{"kind": "tool", "box": [0.5, 0, 0.2, 1]}]}]}))
    with pytest.raises(BadInput, match="example 1: a box is not within"):
        load_examples(f)
    f.write_text(json.dumps({"system": "Describe.", "examples": [{"label": "x", "description": "y"}]}))
    ps = load_examples(f)
    assert ps.system == "Describe." and ps.examples[0].boxes == ()
