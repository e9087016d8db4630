"""Workplace Assistant environment (NeMo Gym ``workplace_assistant``, built on WorkBench), pure stdlib.

Public entry points::

    from env_sim.database import Database              # Database.fresh(): an episode's state
    from env_sim.tools import TOOL_SCHEMAS, TOOL_NAMES  # the 27 tools, reference order
    from env_sim.execute import call_tool, execute_call
    from env_sim.verify import verify, Verdict
"""

__version__ = "0.1.0"
