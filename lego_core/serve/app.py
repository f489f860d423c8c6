"""The `lego serve` page (gradio): a frame and actions in, action frames and descriptions out.

Local by design: no analytics, no share link, system fonts only (nothing fetched from outside the
machine), uploads capped at MAX_UPLOAD_MB, one request at a time with the rest queued.
"""

from __future__ import annotations

import logging
import os
import random

from lego_core.errors import BadInput
from lego_core.serve.session import MAX_UPLOAD_MB, ServeSession, Settings, bundled_samples

log = logging.getLogger(__name__)

GRADIO_MISSING = "lego serve needs gradio: pip install 'lego[serve]' (or pip install 'gradio>=6,<7')"
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def import_gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"          # before the import: gradio reads it then
    try:
        import gradio as gr
    except ImportError:
        raise BadInput(GRADIO_MISSING) from None
    if not gr.__version__.startswith("6."):
        raise BadInput(f"lego serve is written for gradio 6 and found {gr.__version__}: pip install 'gradio>=6,<7'")
    return gr


def patient_self_check(gr) -> None:
    """gradio checks that its own page answers (a HEAD request, 3 s timeout) and stops a healthy
    server when it does not; on a busy machine (loading models, other jobs) that check fails. Run
    gradio's own check up to a dozen times before giving up."""
    networking = gr.networking
    if getattr(networking.url_ok, "lego_patient", False):
        return
    check = networking.url_ok

    def url_ok(url: str) -> bool:
        return any(check(url) for _ in range(12))

    url_ok.lego_patient = True
    networking.url_ok = url_ok


def theme(gr):
    """gradio's default look with system fonts: its own theme would load web fonts from Google."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def gallery_items(shown) -> list[tuple]:
    """Row-major for a gallery with one column per action: row k holds every action's k-th image."""
    rows = max(len(s.images) for s in shown)
    return [(s.images[k], f"{s.action} (seed {s.seeds[k]}): {s.description}" if s.description != s.action
             else f"{s.action} (seed {s.seeds[k]})")
            for k in range(rows) for s in shown if k < len(s.images)]


def commands_text(shown) -> str:
    return "\n".join(f"# {s.action}\n{s.command}" for s in shown)


def build_page(session: ServeSession, extra_samples=()):
    gr = import_gradio()
    d = session.defaults()
    samples = [(str(p), label) for p, label in (*bundled_samples(), *extra_samples)]

    def run(frame, actions, steps, guidance, image_guidance, seed, randomise, num_images,
            progress=gr.Progress(track_tqdm=True)):
        seed = random.randrange(2 ** 31) if randomise else int(seed)
        progress(0, desc="describing and denoising")
        try:
            shown = session.generate(frame, actions, Settings(int(steps), guidance, image_guidance, seed,
                                                                int(num_images)))
        except BadInput as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - one failed request must never take the server down
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {type(e).__name__}: {e}", print_exception=False) from None
        return (gr.Gallery(value=gallery_items(shown), columns=len(shown)), commands_text(shown), seed)

    with gr.Blocks(title="LEGO: egocentric action frames", analytics_enabled=False) as page:
        gr.Markdown("## LEGO: egocentric action frame generation\n"
                    "A frame from a head-mounted camera and an action (one per line) → the frame showing "
                    f"the action being done.  \n{session.models.note}.")
        with gr.Row():
            with gr.Column(scale=1):
                frame = gr.Image(label=f"Input frame (≤ {MAX_UPLOAD_MB} MB)", type="filepath",
                                 sources=["upload", "clipboard"], height=260)
                actions = gr.Textbox(label="Actions, one per line", lines=3, placeholder="cut onion\nopen fridge")
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(1, 200, value=d.steps, step=1, label="Denoising steps")
                    guidance = gr.Slider(0, 20, value=d.guidance, step=0.1, label="Text guidance s_T")
                    image_guidance = gr.Slider(0, 10, value=d.image_guidance, step=0.1, label="Image guidance s_I")
                    with gr.Row():
                        seed = gr.Number(value=d.seed, precision=0, label="Seed")
                        randomise = gr.Checkbox(value=False, label="Randomise")
                    num_images = gr.Slider(1, 8, value=d.num_images, step=1, label="Samples per action")
                button = gr.Button("Generate", variant="primary")
                gr.Examples([[p, label] for p, label in samples], inputs=[frame, actions], label="Sample frames")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Action frames (one column per action)", columns=2, object_fit="contain",
                                     preview=False, format="png", buttons=["download", "fullscreen"])
                commands = gr.Code(label="Reproduce with `lego generate`", language="shell", interactive=False,
                               wrap_lines=True)
        inputs = [frame, actions, steps, guidance, image_guidance, seed, randomise, num_images]
        button.click(run, inputs, [gallery, commands, seed], api_name="generate", concurrency_limit=1)
    return page


def serve(session: ServeSession, host: str = "127.0.0.1", port: int = 7860, *, extra_samples=(),
          block: bool = True, quiet: bool = False):
    """Start the page; with `block=False` return the running gradio app (tests close it)."""
    gr = import_gradio()
    logging.getLogger("httpx").setLevel(logging.WARNING)   # gradio's own requests to itself: not news
    patient_self_check(gr)
    page = build_page(session, extra_samples)
    page.queue(default_concurrency_limit=1, max_size=64)
    folders = {str(p.parent) for p, _ in (*bundled_samples(), *extra_samples)}
    page.launch(server_name=host, server_port=port, share=False, max_file_size=f"{MAX_UPLOAD_MB}mb",
                show_error=True, quiet=quiet, prevent_thread_lock=not block, theme=theme(gr), ssr_mode=False,
                pwa=False, mcp_server=False, allowed_paths=sorted(folders), footer_links=["api"])
    return page
