"""Rank-0 logging: a progress bar and lines on stderr, JSONL in the run folder, TensorBoard if installed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("lego.train")


class RunLogger:
    def __init__(self, run_dir: str | Path, *, enabled: bool, total_steps: int, start_step: int = 0,
                 progress: bool = True, every: int = 10, desc: str = "train"):
        self.enabled = enabled
        self.every = max(1, every)
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "log.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.tb = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True)
        self._t = time.perf_counter()

    def event(self, kind: str, **fields) -> None:
        """A one-off record (resume, checkpoint, validation) in the JSONL and on stderr."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"event": kind, "time": time.time(), **fields}) + "\n")
        self.jsonl.flush()
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))

    def step(self, step: int, **scalars) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if isinstance(v, float)}, refresh=False)
        if step % self.every == 0:
            self.jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
            self.jsonl.flush()
            if self.tb is not None:
                for k, v in scalars.items():
                    self.tb.add_scalar(k, v, step)

    def image(self, tag: str, path: str | Path, step: int) -> None:
        if self.enabled and self.tb is not None:
            import numpy as np
            from PIL import Image

            self.tb.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
