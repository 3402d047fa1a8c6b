"""`make lint`'s configuration checks: tools we did not write read every Dockerfile, Kubernetes
manifest and Compose file that git tracks, and a HIGH or CRITICAL finding fails the run.

  trivy config   Dockerfiles and manifests (its checks are built into the pinned binary: offline)
  checkov        Dockerfiles and manifests; it has no severities without its vendor's service, so
                 every check that fails counts
  compose-lint   Compose files (neither trivy nor checkov has rules for Compose)

Files are found by what they are, so a new lesson's are checked without being listed here: a
Dockerfile by its name (as hadolint's are, scripts/lint.sh), a manifest as a YAML document with
`apiVersion` and `kind`, a Compose file as one with a `services` mapping.

A finding kept on purpose is suppressed where each tool reads it, with the reason, and printed here
as "kept": checkov's `# checkov:skip=ID: reason` comment in the Dockerfile (or its `checkov.io/skip`
annotation in a manifest); trivy reads no comment in a Dockerfile, so its ones are in
.trivyignore.yaml, each with the path it covers and a statement; compose-lint's in
.compose-lint.yml, by rule and service, with a reason. Findings below HIGH are counted, not gated.

Usage: python -m scripts.config_checks [--checkov PATH] [FILE ...]   (default: every tracked file)
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GATED = {"HIGH", "CRITICAL"}
TIMEOUT = 300  # seconds per tool: each takes 5-20 s, longer on a busy machine
TRIVY_IGNORE = ".trivyignore.yaml"
COMPOSE_LINT_CONFIG = ".compose-lint.yml"


@dataclass
class Finding:
    rule: str
    severity: str  # HIGH, CRITICAL... or FAILED for checkov, which has none offline
    where: str  # path[:line] [service]
    title: str
    reason: str = ""  # why it is kept, when it is suppressed


@dataclass
class Report:
    tool: str
    scanned: str  # what it read, as a phrase
    failing: list[Finding] = field(default_factory=list)
    kept: list[Finding] = field(default_factory=list)
    not_gated: Counter = field(default_factory=Counter)
    error: str = ""
    extra: str = ""  # more of the summary line


# --- What to check --------------------------------------------------------------------------------


def tracked(root: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return [name for name in listed if name and (root / name).is_file()]


def classify(root: Path, files: list[str]) -> dict[str, list[str]]:
    """Dockerfiles by name, manifests and Compose files by what their YAML holds."""
    kinds = {"dockerfile": [], "manifest": [], "compose": []}
    for name in files:
        base = Path(name).name
        if "Dockerfile" in base and not base.endswith(".dockerignore"):
            kinds["dockerfile"].append(name)
        elif base.endswith((".yml", ".yaml")) and not name.startswith(".github/"):
            try:
                documents = [d for d in yaml.safe_load_all((root / name).read_text()) if d]
            except yaml.YAMLError:
                continue  # not ours to judge: a YAML linter's
            mappings = [d for d in documents if isinstance(d, dict)]
            if any("apiVersion" in d and "kind" in d for d in mappings):
                kinds["manifest"].append(name)
            elif any(isinstance(d.get("services"), dict) for d in mappings):
                kinds["compose"].append(name)
    return kinds


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- The tools ------------------------------------------------------------------------------------


def tool(name: str, bin_dir: Path) -> str | None:
    """A tool from the environment this runs in (the hashed lock), else from PATH."""
    beside = bin_dir / name
    return str(beside) if beside.exists() else shutil.which(name)


def tools(checkov: str | None = None) -> dict[str, str | None]:
    """trivy and compose-lint beside this Python (.venv/bin), checkov in its own environment
    inside it (.venv/checkov), each else from PATH."""
    here = Path(sys.executable).parent
    return {
        "trivy": tool("trivy", here),
        "checkov": checkov or tool("checkov", Path(sys.prefix) / "checkov" / "bin"),
        "compose-lint": tool("compose-lint", here),
    }


def run(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return -1, out, f"timed out after {TIMEOUT} s\n{err}"
    return process.returncode, out, err


def start_trivy(trivy: str, root: Path, files: list[str], stage: Path) -> subprocess.Popen:
    """trivy config reads a folder (all of it): a copy of just these files, at their paths, so
    .trivyignore.yaml's paths match and nothing untracked is read."""
    for name in files:
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, stage / name)
    command = [
        trivy, "config", "--quiet", "--format", "json",
        # The checks built into the pinned binary, none downloaded; no telemetry, no update notice.
        "--skip-check-update", "--disable-telemetry", "--skip-version-check",
        "--cache-dir", str(stage / ".trivy-cache"),
        "--misconfig-scanners", "dockerfile,kubernetes",
        "--ignorefile", str(ROOT / TRIVY_IGNORE),
        str(stage),
    ]  # fmt: skip
    return run(command, stage)


def trivy_report(code: int, out: str, err: str, kinds: dict) -> Report:
    files = kinds["dockerfile"] + kinds["manifest"]
    report = Report("trivy config", scanned_phrase(kinds, "dockerfile", "manifest"))
    if code != 0:
        report.error = err.strip() or out.strip()
        return report
    results = json.loads(out).get("Results") or []
    seen = set()
    for result in results:
        seen.add(result["Target"])
        for m in result.get("Misconfigurations") or []:
            if m.get("Status") != "FAIL":
                continue
            line = (m.get("CauseMetadata") or {}).get("StartLine")
            where = f"{result['Target']}:{line}" if line else result["Target"]
            finding = Finding(m["ID"], m["Severity"], where, m["Title"])
            if m["Severity"] in GATED:
                report.failing.append(finding)
            else:
                report.not_gated[m["Severity"]] += 1
    report.kept = trivy_kept(files)
    missing = sorted(set(files) - seen)
    if missing:  # a file trivy did not recognise is a file nobody checked
        report.error = "trivy did not read: " + ", ".join(missing)
    return report


def trivy_kept(files: list[str]) -> list[Finding]:
    ignores = yaml.safe_load((ROOT / TRIVY_IGNORE).read_text()) or {}
    kept = []
    for entry in ignores.get("misconfigurations") or []:
        for path in entry.get("paths") or ["(every file)"]:
            if path in files or not entry.get("paths"):
                kept.append(Finding(entry["id"], "", path, "", entry.get("statement", "")))
    return kept


def start_checkov(checkov: str, root: Path, kinds: dict) -> subprocess.Popen:
    files = kinds["dockerfile"] + kinds["manifest"]
    command = [
        checkov, "--framework", "dockerfile", "kubernetes", "--output", "json",
        # Open-source checks only, nothing downloaded or sent (no API key: it scans locally).
        "--skip-download", "--skip-results-upload", "-f", *files,
    ]  # fmt: skip
    return run(command, root)


def checkov_report(code: int, out: str, err: str, kinds: dict) -> Report:
    report = Report("checkov", scanned_phrase(kinds, "dockerfile", "manifest"))
    try:
        parsed = json.loads(out)
    except json.JSONDecodeError:
        report.error = f"exit {code}: " + (err.strip()[-2000:] or out.strip()[-2000:])
        return report
    passed = 0
    for part in parsed if isinstance(parsed, list) else [parsed]:
        results, summary = part.get("results", {}), part.get("summary", {})
        passed += summary.get("passed", 0)
        if summary.get("parsing_errors"):
            report.error = f"checkov could not parse: {results.get('parsing_errors')}"
        for check in results.get("failed_checks", []):
            report.failing.append(checkov_finding(check))
        for check in results.get("skipped_checks", []):
            finding = checkov_finding(check)
            finding.reason = (check.get("check_result") or {}).get("suppress_comment", "").strip()
            report.kept.append(finding)
    report.extra = f"{passed} passed"
    return report


def checkov_finding(check: dict) -> Finding:
    first = (check.get("file_line_range") or [None])[0]
    path = check["file_path"].lstrip("/")
    where = f"{path}:{first}" if first else path
    return Finding(check["check_id"], "FAILED", where, check["check_name"])


def start_compose_lint(
    compose_lint: str, root: Path, files: list[str], strict: bool
) -> subprocess.Popen:
    command = [
        compose_lint, "check", "--format", "json", "--fail-on", "high",
        # Only tracked files are read (no .env beside a Compose file: it may hold your keys).
        "--config", str(ROOT / COMPOSE_LINT_CONFIG), "--no-env", *files,
    ]  # fmt: skip
    # Over every Compose file, the policy's typos and stale service names fail too.
    return run(command + ["--strict-config"] * strict, root)


def compose_lint_report(code: int, out: str, err: str, kinds: dict) -> Report:
    report = Report("compose-lint", plural(len(kinds["compose"]), "Compose file"))
    try:
        parsed = json.loads(out)
    except json.JSONDecodeError:
        report.error = f"exit {code}: " + (err.strip() or out.strip())
        return report
    if parsed.get("errors") or code not in (0, 1):
        report.error = f"exit {code}: {parsed.get('errors') or err.strip()}"
    for f in parsed.get("findings", []):
        severity = f["severity"].upper()
        where = f"{f['file']}:{f['line']} {f.get('service') or ''}".rstrip()
        finding = Finding(f["rule_id"], severity, where, f["message"])
        if f.get("suppressed"):
            finding.reason = f.get("suppression_reason") or ""
            report.kept.append(finding)
        elif severity in GATED:
            report.failing.append(finding)
        else:
            report.not_gated[severity] += 1
    return report


def scanned_phrase(kinds: dict, *which: str) -> str:
    names = {"dockerfile": "Dockerfile", "manifest": "manifest", "compose": "Compose file"}
    return ", ".join(plural(len(kinds[k]), names[k]) for k in which)


# --- Report ---------------------------------------------------------------------------------------


def show(report: Report) -> None:
    gated = "failed checks" if report.tool == "checkov" else "HIGH or CRITICAL"
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.not_gated.items()))
    line = f"{report.tool}: {report.scanned}: {len(report.failing)} {gated}"
    line += f" ({report.extra})" if report.extra else ""
    line += f"; not gated: {counts}" if counts else ""
    print(line)
    for f in report.failing:
        print(f"  FAIL {f.rule} {f.severity} {f.where}: {f.title}")
    # Kept findings, one line per rule and reason, with every place it covers.
    grouped = defaultdict(dict)
    for f in report.kept:
        place = f.where.split(":")[0] + (f" {f.where.split(' ')[1]}" if " " in f.where else "")
        grouped[(f.rule, f.reason)][place] = None
    for (rule, reason), places in sorted(grouped.items()):
        print(f"  kept {rule} in {', '.join(places)}: {reason or '(no reason given)'}")
    if report.error:
        print(f"  ERROR {report.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="files to check (default: every tracked file)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="where the files are")
    parser.add_argument("--checkov", help="checkov's path (default: the checkov environment)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    kinds = classify(root, args.files or tracked(root))
    found = tools(args.checkov)
    missing = [name for name, path in found.items() if not path]
    if missing:
        print(
            f"config checks: {', '.join(missing)} not installed (`make lint` installs them; the"
            " trivy wheel in the lock is for Linux x86-64 only: elsewhere install trivy 0.76,"
            " e.g. `brew install trivy`)",
            file=sys.stderr,
        )
        return 1
    print(
        f"config checks: {scanned_phrase(kinds, 'dockerfile', 'manifest', 'compose')};"
        " a HIGH or CRITICAL finding fails"
    )
    with tempfile.TemporaryDirectory(prefix="config-checks-") as stage:
        files = kinds["dockerfile"] + kinds["manifest"]
        running = {
            "trivy": start_trivy(found["trivy"], root, files, Path(stage)),
            "checkov": start_checkov(found["checkov"], root, kinds),
            "compose-lint": start_compose_lint(
                found["compose-lint"], root, kinds["compose"], strict=not args.files
            ),
        }
        reports = [
            trivy_report(*finish(running["trivy"]), kinds),
            checkov_report(*finish(running["checkov"]), kinds),
            compose_lint_report(*finish(running["compose-lint"]), kinds),
        ]
    for report in reports:
        show(report)
    failed = [r.tool for r in reports if r.failing or r.error]
    if failed:
        print(f"config checks FAILED: {', '.join(failed)}")
        return 1
    print("config checks passed: no HIGH or CRITICAL finding, no failed checkov check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
