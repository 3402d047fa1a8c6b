"""The benchmarks' profile (BENCH_PROFILE=1, bench/profiling.py): py-spy's raw stacks read into the
top costs, a lesson's own code and the packages the samples were in. A fake recording: no server
and no py-spy run here."""

from bench import profiling

LOOP = 'process 1:"python";run (runners.py:190);_run_once (asyncio/base_events.py:1922)'
RAW = f"""\
{LOOP};send (socket.py:10) 6
{LOOP};call (lesson08/mcp_gateway.py:40);check (lesson08/pinning.py:9) 3
{LOOP};call (lesson08/mcp_gateway.py:41) 1
{LOOP};validate (/srv/.venv/lib/python3.11/site-packages/pydantic/main.py:3) 1
"""


def test_the_profile_reads_self_the_lessons_own_code_and_the_packages():
    costs = profiling.top_costs(RAW, own="lesson08/")
    assert costs["total"] == 11
    assert costs["on_top"][0] == ("send (socket.py)", 6 / 11, 6 / 11)
    assert ("check (pinning.py)", 3 / 11, 3 / 11) in costs["on_top"]
    call = ("call (mcp_gateway.py)", 4 / 11, 1 / 11)
    check = ("check (pinning.py)", 3 / 11, 3 / 11)
    assert costs["own_code"] == [call, check]  # pydantic's frame is a library's
    assert dict(costs["packages"]) == {
        "the standard library": 6 / 11,
        "lesson08": 4 / 11,
        "pydantic": 1 / 11,
    }


def test_the_tables_quote_frame_names_as_code():
    lines = profiling.tables(profiling.top_costs(RAW, own="lesson08/"), "own")
    assert "| `send (socket.py)` | 55% | 55% |" in lines
    assert "| pydantic | 9% |" in lines
