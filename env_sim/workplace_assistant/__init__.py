"""The Workplace Assistant environment (NeMo Gym's ``workplace_assistant``, built on WorkBench); see README.md.

from env_sim.workplace_assistant import ENVIRONMENT, call_tool   # the Environment; run one tool on a Database
from env_sim.workplace_assistant.database import Database        # Database.fresh(): an episode's state
from env_sim.workplace_assistant.tools import TOOL_SCHEMAS, TOOL_NAMES  # the 27 tools, reference order
from env_sim.workplace_assistant.verify import verify            # the 0/1 final-state reward
"""

from env_sim.workplace_assistant.environment import ENVIRONMENT
from env_sim.workplace_assistant.tools import call_tool

__all__ = ["ENVIRONMENT", "call_tool"]
