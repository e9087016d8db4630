"""The Megatron-core policy: one Ray actor per rank (worker.py), its optimizer and LR schedule, and the overlapped
data-parallel gradient reduce."""
