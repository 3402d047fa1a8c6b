"""`python -m research_agent.worker`: one variation, run by a worker container (worker.py)."""

import sys

from research_agent.worker.worker import main

sys.exit(main())
