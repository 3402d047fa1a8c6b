"""python -m lesson11: the gate (lesson11/gate.py), timed from the start of this process."""

import time

STARTED = time.perf_counter()  # before the imports: the time printed is the whole run's

import sys  # noqa: E402

from lesson11.gate import main  # noqa: E402

sys.exit(main(started=STARTED))
