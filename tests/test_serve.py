"""`lego serve`: the real server on a free loopback port, driven through its HTTP/client API and a
headless browser; which models it picks; one clear line when something is missing."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import LEGO, REPO, run_cli

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"      # gradio and gradio_client: no telemetry from the tests
pytest.importorskip("gradio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_llava, tiny_ip2p):
    """A joint-conditioned tiny LEGO model and the tiny LLaVA whose width it was built for."""
    from lego_core.diffusion.build import build_from_pretrained

    root = tmp_path_factory.mktemp("serve")
    llava, base = tiny_llava, tiny_ip2p
    build_from_pretrained(base, conditioning="description+joint", vllm=llava).save_pretrained(root / "joint")
    return {"model": root / "joint", "vllm": llava, "root": root}


@pytest.fixture(scope="module")
def server(tiny):
    """`lego serve` as a user starts it, in its own process group; stopped (and checked gone) at the end."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tiny["root"] / "serve.log", "w")
    proc = subprocess.Popen([LEGO, "serve", "--model", str(tiny["model"]), "--vllm", str(tiny["vllm"]),
                             "--port", str(port), "--steps", "2", "--size", "64", "--greedy", "--max-new-tokens", "6",
                             "--work-dir", str(tiny["root"] / "work"), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):                          # up to 5 min on a loaded 2-core machine
            if proc.poll() is not None:
                pytest.fail(f"lego serve exited {proc.returncode}: {(tiny['root'] / 'serve.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("lego serve did not answer")
        yield {"url": url, "proc": proc, **tiny}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
        assert proc.poll() is not None


@pytest.fixture(scope="module")
def client(server):
    """One API client for the module, closed before the server stops (its threads must not outlive it)."""
    from gradio_client import Client

    c = Client(server["url"], verbose=False, analytics_enabled=False)
    yield c
    c.close()
    executor = getattr(c, "stream_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)


def generate(client, frame, actions, num_images=1):
    from gradio_client import handle_file

    return client.predict(handle_file(str(frame)), actions, 2, 7.5, 1.5, 0, False, num_images, api_name="/generate")


def test_two_actions_give_two_images_with_descriptions_and_commands(client):
    from PIL import Image

    from lego_core.serve.session import bundled_samples

    frame = bundled_samples()[0][0]
    gallery, commands, seed = generate(client, frame, "cut onion\nopen fridge")
    items = gallery["value"]
    assert gallery["columns"] == 2 and len(items) == 2 and seed == 0
    for item, action in zip(items, ("cut onion", "open fridge")):
        assert item["caption"].startswith(f"{action} (seed 0): ")           # + the VLLM's description
        assert len(item["caption"]) > len(f"{action} (seed 0): ")
        width, height = Image.open(item["image"] if isinstance(item["image"], str) else item["image"]["path"]).size
        assert abs(width / height - 455 / 256) < 0.05                       # the input's aspect ratio
    # Each command names the kept upload, byte for byte the frame sent, and every setting.
    lines = [line for line in commands.splitlines() if line.startswith("lego generate ")]
    assert len(lines) == 2 and "'cut onion'" in lines[0] and "--steps 2 --size 64" in lines[0]
    kept = Path(lines[0].split()[2])
    assert kept.read_bytes() == Path(frame).read_bytes()


def test_a_bad_upload_is_a_message_and_the_server_keeps_serving(server, client, tmp_path):
    from lego_core.serve.session import bundled_samples

    not_image = tmp_path / "frame.jpg"
    not_image.write_text("not an image")
    with pytest.raises(Exception, match="(?i)image"):
        generate(client, not_image, "cut onion")
    too_big = tmp_path / "big.png"
    with open(too_big, "wb") as f:
        f.truncate(21 * 1024 * 1024)
    with pytest.raises(Exception, match="(?i)size|large|413"):
        generate(client, too_big, "cut onion")
    with pytest.raises(Exception, match="no action"):
        generate(client, bundled_samples()[1][0], "  \n")
    gallery, _, _ = generate(client, bundled_samples()[1][0], "wash plate", num_images=2)
    assert len(gallery["value"]) == 2 and server["proc"].poll() is None


def test_the_page_loads_nothing_from_outside(server):
    """System fonts only: gradio's default theme would fetch its fonts from Google."""
    html = urllib.request.urlopen(server["url"], timeout=30).read().decode()
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html
    css = urllib.request.urlopen(server["url"] + "theme.css", timeout=30).read().decode()
    assert "googleapis" not in css and "ui-sans-serif" in css


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium (apt-get install chromium)")
def test_a_browser_submits_a_frame_and_an_action(server, tmp_path):
    """Headless Chromium loads the page, picks a sample frame, submits, and shows the result."""
    shot = tmp_path / "serve.png"
    script = REPO / "scripts" / "serve_screenshot.py"
    proc = subprocess.run([sys.executable, str(script), server["url"], str(shot)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "action frames shown: 1" in proc.stdout
    assert shot.stat().st_size > 10_000


def test_models_come_from_the_demo_folder_or_a_clear_line(tmp_path):
    from lego_core.errors import BadInput
    from lego_core.serve.session import find_models

    with pytest.raises(BadInput, match="lego demo"):
        find_models(None, None, tmp_path)
    for layout in ("runs/lego/model", "runs/lego-description-joint/model"):
        (tmp_path / layout).mkdir(parents=True)
        (tmp_path / layout / "model_index.json").write_text("{}")
    (tmp_path / "runs/llava/model").mkdir(parents=True)
    (tmp_path / "runs/llava/model/config.json").write_text("{}")
    found = find_models(None, None, tmp_path)
    assert found.model.endswith("lego-description-joint/model") and found.vllm.endswith("llava/model")
    assert "lego demo" in found.note
    assert find_models("m", None, tmp_path).vllm is None


def test_no_model_and_no_gradio_are_one_line_exit_2(tmp_path, monkeypatch):
    result = run_cli("serve", "--demo-dir", tmp_path)
    assert result.exit_code == 2 and "lego demo" in result.output and result.output.count("\n") == 1
    monkeypatch.setitem(sys.modules, "gradio", None)                # as if the extra were not installed
    result = run_cli("serve", "--demo-dir", tmp_path)
    assert result.exit_code == 2 and "lego[serve]" in result.output


def test_sample_frames_bundled_and_from_shards(tmp_path):
    from PIL import Image

    from lego_core.serve.session import bundled_samples, shard_samples

    bundled = bundled_samples()
    assert len(bundled) >= 2 and all(label for _, label in bundled)
    assert sum(p.stat().st_size for p, _ in bundled) < 50_000
    frames = shard_samples(str(REPO / "shards" / "epic-000000.tar"), tmp_path, limit=3)
    assert len(frames) == 3 and all(label for _, label in frames)
    assert Image.open(frames[0][0]).size == (455, 256)
