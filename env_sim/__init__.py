"""Tool-use environments for agents, pure stdlib (see README.md): generic machinery here, one folder per environment.

Generic parts::

    from env_sim.environment import Environment, Verdict, get_environment  # the seam an environment fills in
    from env_sim.agent import Episode, run_episode      # the step-wise agent loop
    from env_sim.formats import get_format              # tool-call formats: render tools, parse calls
    from env_sim.execute import execute_call            # one model tool call -> its function_call_output text
    from env_sim.server import make_server              # the HTTP API of a NeMo Gym resources server

Environments: ``env_sim.workplace_assistant`` (email, calendar, analytics, project management, CRM, directory).
"""

__version__ = "0.1.0"
