"""The LEGO latent diffusion model: the VLLM-embedding conditioner, the pipeline, building and
generating. Submodules import torch/diffusers; this package file imports nothing heavy."""
