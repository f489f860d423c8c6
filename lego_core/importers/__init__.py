"""Importers for the LEGO authors' released files: run their checkpoints, VLLM, dataset and
features in lego.

- `checkpoint.import_checkpoint`: a CompVis/LDM (PyTorch Lightning) `.ckpt` -> a LegoPipeline folder.
- `llava.import_llava`: an original-layout LLaVA folder (haotian-liu/LLaVA) -> a transformers folder.
- `dataset.import_dataset`: their frames + JSON (+ `.npy` features) -> our shards.
- `compvis`: the CompVis <-> diffusers key maps (both directions).
- `state_dict.read_state_dict`: a checkpoint file's tensors, read safely; `sd15_files`: SD-1.5's
  configs and CLIP tokenizer for an imported checkpoint.

Importing this package is cheap: torch, diffusers and transformers are imported inside functions.
"""
