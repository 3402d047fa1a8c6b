"""What a run of the suite says: a pass rate per case and evaluator (with a Wilson interval when
each case ran more than once), the gate's verdict against a baseline, the table and summary line
printed, and the report: an HTML page with its plots drawn by matplotlib into the page itself
(SVG, no network, no files beside it)."""

import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field

from .evaluators import Run, Verdict
from .traces import usage

TOLERANCE = 0.34  # a required check may pass one run in three fewer than its baseline
Z95 = 1.96


def wilson(passed: int, runs: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a pass rate: honest at 0/3 and 3/3, where the plain
    rate's interval would have no width."""
    if runs == 0:
        return 0.0, 1.0
    rate = passed / runs
    denominator = 1 + Z95**2 / runs
    centre = (rate + Z95**2 / (2 * runs)) / denominator
    half = Z95 * math.sqrt(rate * (1 - rate) / runs + Z95**2 / (4 * runs**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Row:
    """One case and one evaluator over all its runs."""

    case: str
    kind: str
    evaluator: str
    required: bool
    passed: int = 0
    runs: int = 0
    last_why: str = ""
    failed_why: str = ""  # the first failing run's, which the table shows over a passing one's
    baseline: float = 1.0
    failing: bool = False  # below its baseline by more than the tolerance, and required

    @property
    def why(self) -> str:
        return self.failed_why or self.last_why

    @property
    def rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    def result(self) -> str:
        word = "FAIL" if self.failing else ("pass" if self.passed == self.runs else "fail")
        return word if self.runs == 1 else f"{word} {self.passed}/{self.runs}"


@dataclass
class Outcome:
    rows: list[Row]
    cases: list[dict]
    per_case: dict[str, dict] = field(default_factory=dict)  # mean usage and seconds per case
    tolerance: float = TOLERANCE
    model: str = ""
    seconds: float = 0.0

    @property
    def failing(self) -> list[Row]:
        return [row for row in self.rows if row.failing]

    @property
    def failing_cases(self) -> list[str]:
        return list(dict.fromkeys(row.case for row in self.failing))


def outcome(
    results: list[tuple[Run, list[Verdict]]],
    baseline: dict | None = None,
    tolerance: float = TOLERANCE,
) -> Outcome:
    """The runs' verdicts as rows, each judged against its baseline rate (1.0 when none):
    a required row fails the gate when its pass rate is below baseline - tolerance."""
    rates = (baseline or {}).get("rates", {})
    rows: dict[tuple[str, str], Row] = {}
    cases: dict[str, dict] = {}
    spent: dict[str, list[dict]] = defaultdict(list)
    for run, verdicts in results:
        case = run.case
        cases[case["id"]] = case
        spent[case["id"]].append(usage(run.spans))
        for v in verdicts:
            row = rows.setdefault(
                (v.case, v.evaluator),
                Row(v.case, case["kind"], v.evaluator, v.required),
            )
            row.runs += 1
            row.passed += v.passed
            row.last_why = v.why
            if not v.passed and not row.failed_why:
                row.failed_why = v.why
    for row in rows.values():
        row.baseline = rates.get(row.case, {}).get(row.evaluator, 1.0)
        row.failing = row.required and row.rate < row.baseline - tolerance
    per_case = {
        case: {key: sum(u[key] for u in used) / len(used) for key in used[0]}
        for case, used in spent.items()
    }
    return Outcome(list(rows.values()), list(cases.values()), per_case, tolerance)


def table(result: Outcome) -> str:
    header = ("case", "evaluator", "result", "why")
    lines = [header] + [(r.case, r.evaluator, r.result(), r.why) for r in result.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:3])) + "  " + line[3]
        for line in lines
    )


def summary(result: Outcome, report_path: str) -> str:
    rows, failing = result.rows, result.failing
    failed = [r for r in rows if r.passed < r.runs]
    runs = max((r.runs for r in rows), default=1)
    tracked = len({r.case for r in failed if not r.required})
    verdict = "FAILED" if failing else "passed"
    head = (
        f"evals: {len(result.cases)} cases, {len(rows)} checks"
        + (f" x {runs} runs" if runs > 1 else "")
        + f": {len(rows) - len(failed)} passed, {len(failed)} failed"
    )
    if runs > 1:
        passed = sum(r.passed for r in rows)
        total = sum(r.runs for r in rows)
        low, high = wilson(passed, total)
        head += f" (pass rate {passed / total:.2f}, 95% interval {low:.2f}-{high:.2f})"
    tail = f"; gate {verdict}"
    if failing:
        tail += f": {', '.join(result.failing_cases)}"
    elif tracked:
        tail += f" ({tracked} case(s) not required still failing)"
    return f"{head}{tail} in {result.seconds:.1f} s; report {report_path}"


# --- The HTML report ------------------------------------------------------------------------------

KIND_COLOURS = {
    "answered": "#4c78a8",
    "not_answered": "#72b7b2",
    "needs_python": "#f58518",
    "tool_failure": "#e45756",
    "injection": "#b279a2",
    "api_limits": "#9d755d",
}


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()[buffer.getvalue().index("<svg") :]


def plots(result: Outcome) -> list[tuple[str, str]]:
    """(title, inline SVG) for each plot: pass rate per evaluator; time and calls per case."""
    import matplotlib

    matplotlib.use("Agg")  # draws into memory: no display, no window
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    by_evaluator: dict[str, list[Row]] = defaultdict(list)
    for row in result.rows:
        by_evaluator[row.evaluator].append(row)
    names = list(by_evaluator)
    rates, errors = [], [[], []]
    for name in names:
        passed = sum(r.passed for r in by_evaluator[name])
        runs = sum(r.runs for r in by_evaluator[name])
        low, high = wilson(passed, runs)
        rates.append(passed / runs)
        errors[0].append(max(passed / runs - low, 0.0))
        errors[1].append(max(high - passed / runs, 0.0))
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(names) + 1))
    # Red: a required check of it fails the gate; amber: only tracked cases fail; green: none.
    colours = [
        "#e45756"
        if any(r.failing for r in by_evaluator[name])
        else "#f2a93b"
        if rate < 1
        else "#54a24b"
        for name, rate in zip(names, rates, strict=True)
    ]
    axis.barh(names, rates, xerr=errors, color=colours, capsize=3, ecolor="#555")
    for y, (rate, name) in enumerate(zip(rates, names, strict=True)):
        checks = len(by_evaluator[name])
        axis.text(1.02, y, f"{rate:.0%} of {checks}", va="center")
    axis.set_xlim(0, 1.18)
    axis.invert_yaxis()
    axis.set_xlabel("pass rate (bars: 95% Wilson interval)")
    first = _svg(figure)
    plt.close(figure)

    cases = result.cases
    labels = [c["id"] for c in cases]
    spent = [result.per_case[c["id"]] for c in cases]
    colours = [KIND_COLOURS.get(c["kind"], "#888") for c in cases]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    top.bar(labels, [s["seconds"] * 1000 for s in spent], color=colours)
    top.set_ylabel("latency (ms)")
    models = [s["model_calls"] for s in spent]
    tools = [s["tool_calls"] for s in spent]
    bottom.bar(labels, models, color="#4c78a8", label="model calls")
    bottom.bar(labels, tools, bottom=models, color="#f58518", label="tool calls")
    bottom.set_ylabel("calls per run")
    bottom.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    bottom.legend(loc="upper right")
    bottom.tick_params(axis="x", rotation=90)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLOURS.values()]
    top.legend(handles, list(KIND_COLOURS), ncols=6, loc="lower left", bbox_to_anchor=(0, 1.02))
    second = _svg(figure)
    plt.close(figure)
    return [("Pass rate per evaluator", first), ("Latency and calls per case", second)]


def page(result: Outcome, facts: dict) -> str:
    e = html.escape
    rows = sorted(result.rows, key=lambda r: (not r.failing, r.passed == r.runs))
    body = "\n".join(
        f'<tr class="{"bad" if r.failing else "ok" if r.passed == r.runs else "warn"}">'
        f"<td>{e(r.case)}</td><td>{e(r.kind)}</td><td>{e(r.evaluator)}</td>"
        f"<td>{e(r.result())}</td><td>{r.baseline:.2f}</td><td>{e(r.why)}</td></tr>"
        for r in rows
    )
    figures = "\n".join(f"<h2>{e(title)}</h2>\n{svg}" for title, svg in plots(result))
    gate = "FAILED" if result.failing else "passed"
    listed = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in facts.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evals: gate {gate}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; color: #222; }}
h1 span {{ color: {"#c62828" if result.failing else "#2e7d32"}; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; }}
table {{ border-collapse: collapse; font-size: .85rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .25rem .5rem; text-align: left; }}
tr.bad td {{ background: #fdecea; }} tr.warn td {{ background: #fff8e1; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>Evals of the research agent: gate <span>{gate}</span></h1>
<dl>{listed}</dl>
{figures}
<h2>Every check</h2>
<table><thead><tr><th>case</th><th>kind</th><th>evaluator</th><th>result</th><th>baseline</th>
<th>why</th></tr></thead><tbody>
{body}
</tbody></table>
</body></html>
"""
