"""GRPO training: advantages, loss, the Megatron-core policy, checkpoints, metrics and the trainer loop."""
