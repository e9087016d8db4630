"""``python -m env_sim``: see env_sim.cli."""

import sys

from env_sim.cli import main

sys.exit(main())
