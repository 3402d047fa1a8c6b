"""`make evals` (python -m lesson11, which calls main here): the research agent's evals, a gate.

Runs every case of the dataset through the research service in this process, reads each run from
its spans, prints a table (case, evaluator, result, why) and a summary line, writes the report
(evals-report/index.html), and exits 1 when a required check fails.

Offline (no OPENAI_API_KEY) each case runs once: the model is deterministic. With a key each runs
--runs times (3 by default), a check's pass rate is compared with the baseline's for that model
(code/lesson11/baselines/<model>.json, written by --write-baseline: `make evals-baseline`), and a
required check fails when its rate is below the baseline's by more than --tolerance (0.34: one
run in three); an LLM judge (openevals) adds its verdict, reported but never required.

With --phoenix URL (lesson 09's viewer, `make lesson-09`) the spans go to Phoenix, the evaluators
read them back from it, and the results are logged there as an experiment on the dataset.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINES = Path(__file__).resolve().parent / "baselines"
REPORT_DIR = ROOT / "evals-report"


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lesson11", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("RUNS") or 0) or None)
    parser.add_argument("--tolerance", type=float, default=None)
    parser.add_argument("--case", action="append", default=[], help="only this case (repeatable)")
    parser.add_argument("--kind", action="append", default=[], help="only cases of this kind")
    parser.add_argument("--write-baseline", action="store_true")
    parser.add_argument("--no-judge", action="store_true", help="no LLM judge with a real model")
    parser.add_argument("--judge-model", default=os.environ.get("JUDGE_MODEL"))
    parser.add_argument("--phoenix", default=os.environ.get("PHOENIX_URL") or None)
    parser.add_argument("--report", type=Path, default=REPORT_DIR)
    parser.add_argument("--baselines", type=Path, default=BASELINES, help="the baselines' folder")
    parser.add_argument("--quiet", action="store_true", help="failing rows only in the table")
    return parser.parse_args(argv)


def commit() -> str:
    try:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return found.stdout.strip() or "-"
    except OSError:
        return "-"


def main(argv: list[str] | None = None, started: float | None = None, **agent_options) -> int:
    """The gate: 0 when every required check holds, 1 when one fails. `started`: when the run
    began (the time printed is the whole run's, imports included); `agent_options` go to
    lesson11.compose.agent (a test breaks the agent with them: another search, no approval)."""
    started = time.perf_counter() if started is None else started
    args = arguments(argv)
    from . import compose, report, runner

    dataset = runner.load()
    cases = [
        c
        for c in dataset["cases"]
        if (not args.case or c["id"] in args.case) and (not args.kind or c["kind"] in args.kind)
    ]
    if not cases:
        print(f"no case matches {args.case or ''} {args.kind or ''}", file=sys.stderr)
        return 2
    settings = compose.settings()
    model = settings.model_label
    runs = args.runs or (1 if settings.offline else 3)
    tolerance = report.TOLERANCE if args.tolerance is None else args.tolerance
    baseline_file = args.baselines / f"{model}.json"
    baseline = None
    if baseline_file.is_file() and not args.write_baseline:
        baseline = json.loads(baseline_file.read_text(encoding="utf-8"))
    judge = None
    if not settings.offline and not args.no_judge:
        from .judge import make_judge

        judge = make_judge(settings, args.judge_model)
    phoenix = None
    if args.phoenix:
        from .phoenix import Phoenix

        phoenix = Phoenix(args.phoenix)
    where = f"Phoenix at {args.phoenix}" if phoenix else "this process (in-memory exporter)"
    print(
        f"Evaluating {len(cases)} cases of {dataset['name']} v{dataset['version']} with {model},"
        f" {runs} run(s) each; spans read from {where}",
        flush=True,
    )
    spans_of = phoenix.spans_of if phoenix else None
    with runner.suite(spans_of=spans_of, **agent_options) as running:
        results = runner.run_cases(running, cases, runs, judge)
    result = report.outcome(results, baseline, tolerance)
    result.model = model
    rows = result.rows
    if args.quiet:
        result.rows = [r for r in rows if r.passed < r.runs]
    print(report.table(result))
    result.rows = rows
    facts = {
        "model": model,
        "dataset": f"{dataset['name']} v{dataset['version']}, {len(cases)} cases",
        "runs per case": runs,
        "baseline": baseline_file.name if baseline else "none (every required check must pass)",
        "tolerance": f"{tolerance:g}",
        "spans from": where,
        "commit": commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.report.mkdir(parents=True, exist_ok=True)
    page = args.report / "index.html"
    page.write_text(report.page(result, facts), encoding="utf-8")
    shown = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    result.seconds = time.perf_counter() - started
    print(report.summary(result, str(shown)))
    if args.write_baseline:
        rates: dict[str, dict[str, float]] = {}
        for row in rows:
            rates.setdefault(row.case, {})[row.evaluator] = round(row.rate, 3)
        args.baselines.mkdir(parents=True, exist_ok=True)
        head = {"model": model, "dataset_version": dataset["version"], "runs": runs}
        head["commit"] = commit()
        lines = [f"  {json.dumps(case)}: {json.dumps(rate)}" for case, rate in rates.items()]
        text = json.dumps(head)[:-1] + ', "rates": {\n' + ",\n".join(lines) + "\n}}\n"
        baseline_file.write_text(text, encoding="utf-8")
        shown = (
            baseline_file.relative_to(ROOT) if baseline_file.is_relative_to(ROOT) else baseline_file
        )
        print(f"baseline written: {shown}")
    if phoenix:
        print(phoenix.log_experiment(dataset, results, model))
    return 1 if result.failing else 0
