"""python -m benchmarks [--quick] [--only launch,burst,broker,classroom,scale,semester,university,demos,park]
[--json PATH] [--markdown] [--show PATH] [--park-gib]

Runs the benchmarks, prints a table (each measurement, and the target it is held against with a
pass/MISS mark) and writes every number to JSON with the machine it ran on. Targets are reported,
never asserted: the exit status is 0 unless a section failed to run (1) or the run was interrupted
(130). The Jupyter servers' logs are kept in a ``logs`` folder beside the JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import common
from .common import ROOT, Row, Section

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"
SECTIONS = ("launch", "burst", "broker", "classroom", "scale", "semester", "university", "demos", "park")


def _runners(args: argparse.Namespace) -> dict[str, list[tuple[str, Callable[[], Section]]]]:
    from . import broker, burst, classroom, demos, launch, park, scale, semester, university

    quick = args.quick
    return {
        "launch": [("launch", lambda: launch.run(quick)), ("launch_server", lambda: launch.run_server(quick))],
        "burst": [("burst", lambda: burst.run(quick)), ("burst_server", lambda: burst.run_server_only(quick))],
        "broker": [("broker", lambda: broker.run(quick))],
        "classroom": [("classroom", lambda: classroom.run(quick))],
        "scale": [("scale", lambda: scale.run(quick))],
        "semester": [("semester", lambda: semester.run(quick))],
        "university": [("university", lambda: university.run(quick))],
        "demos": [("demos", lambda: demos.run(quick, args.demos_device))],
        "park": [("park", lambda: park.run(quick, args.park_gib))],
    }


def _table(rows: list[Row], markdown: bool) -> str:
    header = ("section", "measurement", "value", "target", "mark")
    lines = [(r.section, r.metric, r.value, r.target, r.mark) for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        cells = [[cell.replace("|", "\\|") for cell in line] for line in lines]
        for line in cells:  # Markdown drops leading spaces: mark the sub-rows instead
            if line[1].startswith("  "):
                line[1] = "↳ " + line[1].strip()
        out += ["| " + " | ".join(line) + " |" for line in cells]
        return "\n".join(out)
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    previous = None
    for line in lines:
        cells = list(line)
        if cells[0] == previous:
            cells[0] = ""
        else:
            previous = cells[0]
        out.append(fmt.format(*cells).rstrip())
    return "\n".join(out)


def _tally(rows: list[Row], kind: str) -> tuple[int, int]:
    marked = [r for r in rows if r.kind == kind]
    return sum(1 for r in marked if r.passed), len(marked)


def _show(path: Path, markdown: bool) -> int:
    report = json.loads(path.read_text())
    rows = [Row(r["section"], r["measurement"], r["value"], r["target"],
                None if not r["mark"] else r["mark"] in ("pass", "ok"), r["kind"]) for r in report["rows"]]
    print(_table(rows, markdown))
    machine = report["machine"]
    print()
    print(f"targets met: {report['targets_met']} of {report['targets']}; checks passed: {report['checks_passed']} of "
          f"{report['checks']}; wall time {report['wall_s']:.0f} s ({'quick' if report['quick'] else 'full'} run, "
          f"{machine['date']})")
    print(f"machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, {machine['memory_gib']} GiB, "
          f"Python {machine['python']}, commit {machine['git_commit']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run of every section (about a minute)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the results (default: {DEFAULT_JSON.relative_to(ROOT)})")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--show", type=Path, metavar="PATH",
                        help="run nothing: print the table of an earlier run's JSON file "
                             "(with --markdown: for the README)")
    parser.add_argument("--demos-device", default=None,
                        help="run the demos section on this device even without CUDA (e.g. cpu, to check it works)")
    parser.add_argument("--park-gib", action="store_true",
                        help="the park section parks and resumes 1 GiB namespaces too (needs ~4 GiB of memory)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    if args.show is not None:
        return _show(args.show, args.markdown)
    common.raise_on_termination()
    json_path = args.json.resolve()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    common.LOG_DIR = str(json_path.parent / "logs")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "machine": common.machine_info(),
        "sections": {},
    }
    rows: list[Row] = []
    failed = interrupted = False
    runners = _runners(args)
    try:
        for name in SECTIONS:
            if name not in chosen:
                continue
            for key, runner in runners[name]:
                print(f"[{time.perf_counter() - started:6.1f} s] {key} ...", file=sys.stderr, flush=True)
                section_started = time.perf_counter()
                try:
                    section = runner()
                except Exception as err:  # noqa: BLE001 - report it, run the other sections
                    failed = True
                    section = Section(key, {"error": f"{type(err).__name__}: {err}",
                                            "traceback": traceback.format_exc()})
                    section.row("error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                    traceback.print_exc()
                section.data["wall_s"] = round(time.perf_counter() - section_started, 1)
                report["sections"][key] = section.data
                rows += section.rows
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: every server, kernel and simulated cluster was stopped", file=sys.stderr)
    wall = time.perf_counter() - started
    report["wall_s"] = round(wall, 1)
    report["interrupted"] = interrupted
    report["rows"] = [{"section": r.section, "measurement": r.metric, "value": r.value, "target": r.target,
                       "mark": r.mark, "kind": r.kind} for r in rows]
    met, targets = _tally(rows, "target")
    ok, checks = _tally(rows, "check")
    report["targets_met"], report["targets"], report["checks_passed"], report["checks"] = met, targets, ok, checks
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, json_path)

    print(_table(rows, args.markdown))
    print()
    print(f"targets met: {met} of {targets}; checks passed: {ok} of {checks}; wall time {wall:.0f} s "
          f"({'quick' if args.quick else 'full'} run)")
    machine = report["machine"]
    print(f"machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, {machine['memory_gib']} GiB, "
          f"Python {machine['python']}; results: {json_path}")
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
