"""What Streamlit's "Running..." widget costs a browser while a page waits, with and without the demo's rule that
hides it (encvit.demo.serving.QUIET_STATUS_CSS).

    python benchmarks/bench_running_widget.py [--repeats 3] [--seconds 8] [--json PATH]

A page of three small tables whose script then sleeps, as a visitor's page does while it waits in the queue, is
served by `streamlit run` on 127.0.0.1 and opened in one headless Chromium page; once its tables are drawn, the CPU
seconds of Chromium's processes are read over `--seconds` of the wait (benchmarks/cpu_by_kind.py). The two pages
take turns, `--repeats` times each; reported: the share of a core a waiting page costs, median (min–max), and the
ratio hidden / shown of each round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser tooling lives with the tests that use it

from browser.chromium import ChromiumNotFound, find_chromium, launch_options  # noqa: E402
from browser.server import page_files, serve_app  # noqa: E402
from cpu_by_kind import CpuByKind  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from encvit.common.timing import Report, markdown_table, ratios, spread_cell, summarize  # noqa: E402
from encvit.demo.serving import QUIET_STATUS_CSS  # noqa: E402

WAITING_PAGE = """import time

import streamlit as st

{style}
for _ in range(3):
    st.table({{"run": ["a run"], "top-1": ["a class 90%"]}})
time.sleep({sleep})
st.write("done")
"""
PAGES = {"widget shown": "", "widget hidden": f"st.html({QUIET_STATUS_CSS!r})"}


def waiting_share(app: Path, seconds: float, folder: Path) -> float:
    """Share of a core that Chromium's processes spend while one page of `app` waits in its run."""
    with serve_app(folder / f"{app.stem}.log", app=app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_options())
        try:
            page = browser.new_context().new_page()
            page.goto(server.url)
            page.get_by_role("table").nth(2).wait_for(timeout=60_000)
            time.sleep(1)  # past the drawing of the tables, into the wait
            with CpuByKind(interval=0.25) as spent:
                time.sleep(seconds)
        finally:
            browser.close()
    return sum(cpu for kind, cpu in spent.seconds.items() if kind.startswith("chromium")) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the two pages, taking turns (default 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of waiting read per page (default 8)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seconds <= 0:
        parser.error("--repeats at least 1 and a positive --seconds")
    try:
        find_chromium()
    except ChromiumNotFound as exc:
        parser.error(str(exc))
    report = Report("benchmarks/bench_running_widget.py", list(sys.argv[1:] if argv is None else argv), vars(args))
    print(report.header(), flush=True)
    shares: dict[str, list[float]] = {name: [] for name in PAGES}
    with tempfile.TemporaryDirectory(prefix="encvit-bench-widget-") as folder:
        apps = page_files(folder, {n: WAITING_PAGE.format(style=s, sleep=args.seconds + 60) for n, s in PAGES.items()})
        for _ in range(args.repeats):
            for name, app in apps.items():  # taking turns, so that the machine's drift touches both alike
                shares[name].append(waiting_share(app, args.seconds, Path(folder)))
    per_round = ratios(shares, "widget shown")
    summaries = {name: summarize(values) for name, values in shares.items()}
    report.results.append(
        {
            "shares": shares,
            "summaries": {name: s.to_dict() for name, s in summaries.items()},
            "ratios": {name: summarize(values).to_dict() for name, values in per_round.items()},
        }
    )
    rows = [
        [name, spread_cell(summaries[name], "%", digits=1, factor=100), spread_cell(summarize(per_round[name]), "x")]
        for name in PAGES
    ]
    print(markdown_table(["page", "share of a core while waiting", "ratio to widget shown"], rows))
    print(report.finish(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
