"""`make bench-mcp`'s profile (BENCH_PROFILE=1): py-spy's raw stacks read into the top costs.
A fake recording: no gateway and no py-spy run here."""

from bench import mcp

LOOP = 'process 1:"python";run (runners.py:190);_run_once (base_events.py:1922)'
RAW = f"""\
{LOOP};send (socket.py:10) 6
{LOOP};call (lesson08/mcp_gateway.py:40);check (lesson08/pinning.py:9) 3
{LOOP};call (lesson08/mcp_gateway.py:41) 1
{LOOP};validate (pydantic/main.py:3) 1
"""


def test_the_profile_reads_self_and_the_gateways_own_code():
    total, on_top, gateway_code = mcp.top_costs(RAW)
    assert total == 11
    assert on_top[0] == ("send (socket.py)", 6 / 11, 6 / 11)
    assert ("check (pinning.py)", 3 / 11, 3 / 11) in on_top
    call = ("call (mcp_gateway.py)", 4 / 11, 1 / 11)
    check = ("check (pinning.py)", 3 / 11, 3 / 11)
    assert gateway_code == [call, check]  # pydantic's frame is a library's
