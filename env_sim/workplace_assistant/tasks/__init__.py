"""Tasks: dataset rows in the Workplace Assistant format, from WorkBench or from the seeded generator.

from env_sim.workplace_assistant.tasks.generator import generate_rows      # generate_rows(n, seed, categories)
from env_sim.workplace_assistant.tasks.workbench import convert_workbench  # the 690 WorkBench tasks
from env_sim.workplace_assistant.tasks.rows import validate_row, read_rows, write_rows
"""
