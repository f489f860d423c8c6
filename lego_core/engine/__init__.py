"""What `lego train` and `lego tune-vllm` share: launch detection, DeepSpeed set-up, checkpoints
with resume, and logging. Submodules import torch/deepspeed; this file imports nothing heavy."""
