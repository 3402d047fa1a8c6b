"""`run_python`'s sandbox (lesson 04): a container per run, started ahead by a pool, admitted by a
bounded queue, swept when abandoned, reaching the network only through the egress gateway.

runner.py starts a container and waits for its end (watchdog.py is its PID 1, seccomp.json its
system calls, exit.py how it ended); config.py holds its limits; admission.py, pool.py, sweep.py
and egress.py wrap it; parts.py puts them together; python_tool.py gives it to the agent.
"""
