"""The GRPO algorithm: advantages, the clipped policy loss, informative prompt selection and the loop (loop.py)."""
