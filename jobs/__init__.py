"""Submitit job definitions and the stage chain (data -> prepare -> sanity -> [sft] -> train -> eval).

Imports only submitit and omegaconf at module level (login nodes); each job imports `pipeline.<stage>` inside.
Slurm job state is read in jobs/slurm_state.py only. Entry point: `python -m jobs --help`.
"""
