"""Pipeline stages: one module per stage, each a plain function `run(cfg) -> Path`.

Nothing here imports torch/vllm/ray at package import time, so the login node can import
`pipeline.config` with only omegaconf installed.
"""
