#!/usr/bin/env python
"""Rebuild the kit's world-aligned tiny LLaVA (lego_core/kit/pretrained/llava-world), the demo's
starting VLLM: a random kit LLaVA trained on fresh layouts of the world to say where a named object
is and which hand is nearer it (lego_core/kit/llava_align.py says why and how).

    python scripts/align_llava.py [--out lego_core/kit/pretrained/llava-world] [--steps 3000]

About 20 minutes on one CPU core (torch threads: --threads). Prints the held-out "where" accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from lego_core.kit.llava_align import WORLD_LLAVA, align_world_llava  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=WORLD_LLAVA)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=500, help="print a learning curve point every N steps")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = align_world_llava(args.out, steps=args.steps, seed=args.seed, eval_every=args.eval_every, progress=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
