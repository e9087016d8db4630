"""Login-safe infrastructure shared by the job chain, the stages and the trainer.

    config.py    recipes from configs/, dotlist overrides, the run's root folder
    schema.py    the structured config every recipe is checked against
    io.py        atomic writes (files, temp paths, directories; shared-filesystem modes), JSONL reading
    manifest.py  what a stage produced, from which inputs, under which config
    signals.py   the preemption signal (SIGUSR2): a flag the training loops poll
    ray_start.py the retry policy for starting Ray (local ray.init and a job's `ray start`)

Only the standard library and omegaconf are imported here: a login node submits with nothing else.
"""
