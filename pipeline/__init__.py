"""The stages: one module each (`data`, `prepare`, `sanity`, `sft`, `train`, `eval`), each a plain function
`run(cfg) -> Path` of the run's config that returns where its artifacts are.

A stage reads its inputs from the shared filesystem, uses the trainer package and env_sim, and never imports
another stage. Heavy libraries (torch, vLLM, Ray, Megatron-core) load inside `run`.
"""
