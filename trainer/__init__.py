"""The GRPO trainer that the stages drive: policy, generation, models, rollouts and the algorithm.

    components.py   the model a run starts from; the policy and generation workers built over it
    distributed.py  torch.distributed / Megatron-core set-up (gloo on CPU, NCCL on GPU) and Ray in a job
    interfaces.py   the seams: Policy, Generation, RolloutFn, SamplingParams, Components
    placement.py    which node and GPU every policy rank and engine gets, and the memory that needs (no Ray)
    ray_placement.py  that plan held in Ray placement groups, with actor options per rank and engine
    policy/         the Megatron-core policy as Ray actors: worker, optimizer, overlapped DP gradient reduce
    generation/     vLLM engines as Ray actors (and a plain-torch backend beside them), weight refit
    models/         HF <-> Megatron bridge, attention and fused ops, shared-prefix packing, the tiny model
    rollout.py      multi-turn episodes in env_sim, batched one generate call per turn
    expert.py       ground-truth trajectories played as rollouts (sft, prompt selection)
    batch.py        rollouts as training tensors
    grpo/           advantages, the loss, prompt selection and the loop itself (loop.py)
    checkpoint.py   step_N checkpoints with top-k retention, and finding them
    metrics.py      metrics.jsonl, wandb, the console line and the plot
    parity/         numerical parity checks (TP/DP against one rank, Megatron against transformers) and the
                    model/worker builders they run on; tests and the GPU benches call them

Nothing heavy is imported at package import: torch, vLLM, Ray and Megatron-core load inside the modules that
need them, which only jobs import.
"""
