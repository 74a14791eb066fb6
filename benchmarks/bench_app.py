"""The demo in front of a class: N visitors at once, each uploading an image and pasting a passphrase, twice.

    python benchmarks/bench_app.py [--visitors 1 5 10 20] [--rounds 2] [--timeout 120] [--settle 180] [--floor]
                                    [--app app/Home.py] [--json PATH]

For each N, a fresh `streamlit run app/Home.py` on a free port of 127.0.0.1 (so its peak memory is this N's);
the teacher opens the page first (the server's first visit, which loads the backbone and adapters); then N
visitors, each in a Chromium context of their own (tests/browser/classroom.py), open the main page at once, and
each uploads an image of their own and pastes a passphrase with no pause between, and waits for the upload's
predictions, `--rounds` times. The browsers share the machine with the server, as a class's laptops do not.

Reported per N: uploads answered, page open (to the first predictions) and Enter to result (to the upload's
predictions with the new key) as median (min–max), the server's peak RSS (VmHWM) and CPU seconds, the whole
machine's CPU seconds (the rest is mostly the browsers) and, below the table, where they went by process (Chromium's
renderers, browser, GPU and utility processes, the server, the Playwright driver; benchmarks/cpu_by_kind.py), and
beside each row the load average before and after and the clock. `--floor` adds the same class on a bare Streamlit
page with the visitors' two widgets and the app's image cards but no models (FLOOR_APP): what the browsers and
Streamlit cost for these steps whatever the app computes. Sizes also come from the environment:
ENCVIT_BENCH_VISITORS (e.g. "1 5"), ENCVIT_BENCH_ROUNDS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser tooling lives with the tests that use it

from browser.chromium import ChromiumNotFound, find_chromium  # noqa: E402
from browser.classroom import as_dicts, class_visit, lost_work  # noqa: E402
from browser.server import APP, serve_app  # noqa: E402
from cpu_by_kind import CpuByKind, process_cpu  # noqa: E402

from encvit.common.timing import Report, cpu_mhz, markdown_table, spread_cell, summarize  # noqa: E402

# What the class's steps cost the browsers and Streamlit whatever the app computes: a bare page with the widgets the
# visitors use (a passphrase and an uploader, in a fragment) and a card per image as the app draws it, with a fixed
# table instead of models; like the app it hides the running widget and derives a passphrase's key once.
FLOOR_APP = """import pandas as pd
import streamlit as st

from encvit.cipher import Key
from encvit.cipher.images import load_image, open_image, png_bytes, to_array
from encvit.common.shipped import DEMO_PASSPHRASE, SAMPLES_DIR
from encvit.demo.card import CARD_CSS, image_card
from encvit.demo.home import enlarge
from encvit.demo.serving import QUIET_STATUS_CSS

st.html(QUIET_STATUS_CSS + CARD_CSS)
RUNS = ["full-encrypted", "melo-encrypted", "proposed-encrypted", "proposed-plain"]
TABLE = pd.DataFrame(
    {"run": RUNS, "sees": ["encrypted"] * 3 + ["plain"], "top-1": ["Coat 90%"] * 4, "top-2": ["Shirt 5%"] * 4,
     "top-3": ["Bag 1%"] * 4}
).set_index("run")


@st.cache_resource
def key_of(passphrase):
    return Key.generate(4, 3, passphrase=passphrase)


@st.fragment
def visitor():
    passphrase = st.text_input("Passphrase", value=DEMO_PASSPHRASE)
    uploads = st.file_uploader("Or upload PNG / JPEG images", type=["png"], accept_multiple_files=True)
    key = key_of(passphrase)
    images = [(f"fashion-{i}.png", load_image(SAMPLES_DIR / f"fashion-{i}.png", channels=3)) for i in range(3)]
    images += [(u.name, to_array(open_image(u.getvalue()), 3, resize=(28, 28))) for u in uploads or []]
    for name, array in images:
        plain, encrypted = png_bytes(enlarge(array, 6)), png_bytes(enlarge(key.encrypt(array), 6))
        st.html(image_card(name, plain, encrypted, key.fingerprint, table=TABLE))


visitor()
"""
# The goals at 20 visitors on 2 cores, the browsers on the same machine.
GOALS = {"result median (s)": 5.0, "result max (s)": 15.0, "open median (s)": 20.0, "peak RSS (MiB)": 2048.0}


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process: from /proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def load() -> float:
    return round(os.getloadavg()[0], 2)


def floor_class(visitors: int, rounds: int, timeout: float, folder: Path) -> dict:
    """The class (after one first visit) on FLOOR_APP: page open and Enter to result, each as a summary dict."""
    app = folder / "floor_app.py"
    app.write_text(FLOOR_APP)
    with serve_app(folder / f"floor-{visitors}.log", app=app) as server:
        class_visit(server.url, 1, 0, folder, timeout)
        visits = class_visit(server.url, visitors, rounds, folder, timeout)
    opens = [v.open_seconds for v in visits if v.open_seconds is not None]
    results = [r.seconds for v in visits for r in v.rounds if r.seconds is not None]
    return {
        "open": summarize(opens).to_dict() if opens else None,
        "result": summarize(results).to_dict() if results else None,
        "lost": lost_work(visits),
    }


def settle(limit: float, most: float) -> None:
    """Wait (at most `most` seconds) until the 1-minute load average is below `limit`: a row's 'load before'
    should be the machine's own, not what the previous row's class left."""
    deadline = time.monotonic() + most
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(5)


def one_class(visitors: int, rounds: int, timeout: float, folder: Path, floor: bool = False, app: Path = APP) -> dict:
    """A fresh server of `app`, the teacher's first visit, then `visitors` at once; what they saw and what it cost.
    With `floor`, then the same class on FLOOR_APP."""
    row = {"visitors": visitors, "rounds": rounds, "load_before": load(), "cpu_mhz": cpu_mhz()}
    with serve_app(folder / f"server-{visitors}.log", app=app) as server:
        started = time.perf_counter()
        (teacher,) = class_visit(server.url, 1, 0, folder, timeout)
        row["first_visit_s"] = teacher.open_seconds
        cpu_before, machine_before = process_cpu(server.pid)[1], machine_cpu_seconds()
        with CpuByKind() as by_kind:
            visits = class_visit(server.url, visitors, rounds, folder, timeout)
        row.update(
            cpu_by_kind={kind: round(seconds, 1) for kind, seconds in by_kind.seconds.items()},
            server_cpu_s=round(process_cpu(server.pid)[1] - cpu_before, 1),
            machine_cpu_s=round(machine_cpu_seconds() - machine_before, 1),
            peak_rss_mb=round(server.peak_rss_mb(), 1),
            load_after=load(),
            seconds=round(time.perf_counter() - started, 1),
            server_problems=server.problems(),
        )
    opens = [v.open_seconds for v in visits if v.open_seconds is not None]
    results = [r.seconds for v in visits for r in v.rounds if r.seconds is not None]
    row.update(
        uploads=visitors * rounds,
        answered=len(results),
        lost=lost_work(visits),
        open=summarize(opens).to_dict() if opens else None,
        result=summarize(results).to_dict() if results else None,
        visits=as_dicts(visits),
        floor=floor_class(visitors, rounds, timeout, folder) if floor else None,
    )
    return row


def cell(summary: dict | None) -> str:
    """'median (min–max)' in seconds, or a dash when nothing was measured."""
    return spread_cell(summary, " s", digits=1) if summary else "–"


def table(rows: list[dict]) -> str:
    header = [
        "visitors",
        "uploads answered",
        "page open",
        "Enter to result",
        "server peak RSS (MiB)",
        "server CPU (s)",
        "machine CPU (s)",
        "first visit",
        "floor: page open",
        "floor: Enter to result",
        "load average before → after",
        "clock (MHz)",
    ]
    lines = [
        [
            row["visitors"],
            f"{row['answered']} of {row['uploads']}",
            cell(row["open"]),
            cell(row["result"]),
            f"{row['peak_rss_mb']:,.0f}",
            f"{row['server_cpu_s']:.1f}",
            f"{row['machine_cpu_s']:.1f}",
            f"{row['first_visit_s']:.1f} s" if row["first_visit_s"] is not None else "–",
            cell(row["floor"] and row["floor"]["open"]),
            cell(row["floor"] and row["floor"]["result"]),
            f"{row['load_before']:.2f} → {row['load_after']:.2f}",
            f"{row['cpu_mhz']:.0f}",
        ]
        for row in rows
    ]
    return markdown_table(header, lines)


def goals(row: dict) -> list[str]:
    """The issue's goals, each met or not, for one row (they are set for 20 visitors)."""
    measured = {
        "result median (s)": row["result"]["median"] if row["result"] else float("inf"),
        "result max (s)": row["result"]["max"] if row["result"] else float("inf"),
        "open median (s)": row["open"]["median"] if row["open"] else float("inf"),
        "peak RSS (MiB)": row["peak_rss_mb"],
    }
    lines = [f"every upload answered: {'met' if row['answered'] == row['uploads'] else 'NOT met'}"]
    lines += [
        f"{name} at most {limit:g}: {measured[name]:.1f}, {'met' if measured[name] <= limit else 'NOT met'}"
        for name, limit in GOALS.items()
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--visitors",
        type=int,
        nargs="+",
        default=[int(n) for n in env("ENCVIT_BENCH_VISITORS", "1 5 10 20").split()],
        help="class sizes, one fresh server each (default 1 5 10 20)",
    )
    parser.add_argument("--rounds", type=int, default=int(env("ENCVIT_BENCH_ROUNDS", 2)), help="uploads per visitor")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a visitor waits for an answer")
    parser.add_argument(
        "--settle",
        type=float,
        default=180.0,
        help="before each class size, wait up to this many seconds for the load average to fall below half the "
        "cores (default 180; 0 to start at once)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the same class on a bare page with the same widgets and cards and no models (what the "
        "browsers and Streamlit cost whatever the app computes)",
    )
    parser.add_argument(
        "--app", type=Path, default=APP, help="the page the class opens (default app/Home.py; e.g. an older version)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report, every visit included, as JSON")
    args = parser.parse_args(argv)
    if min(args.visitors) < 1 or args.rounds < 1 or args.timeout <= 0 or args.settle < 0:
        parser.error("--visitors at least 1, --rounds at least 1, a positive --timeout and --settle at least 0")
    if not args.app.is_file():
        parser.error(f"--app {args.app}: no such page (a Streamlit script, e.g. app/Home.py)")
    try:
        find_chromium()
    except ChromiumNotFound as exc:
        parser.error(str(exc))
    settings = {**vars(args), "app": str(args.app)}
    report = Report("benchmarks/bench_app.py", list(sys.argv[1:] if argv is None else argv), settings=settings)
    print(report.header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="encvit-bench-app-") as folder:
        for visitors in args.visitors:
            settle((os.cpu_count() or 1) / 2, args.settle)
            row = one_class(visitors, args.rounds, args.timeout, Path(folder), args.floor, args.app)
            report.results.append(row)
            print(
                f"  {visitors} visitors: {row['answered']} of {row['uploads']} uploads answered, "
                f"page open {cell(row['open'])}, Enter to result {cell(row['result'])}, "
                f"peak RSS {row['peak_rss_mb']:,.0f} MiB, load {row['load_before']:.2f} → {row['load_after']:.2f}"
                + (
                    f"; floor: page open {cell(row['floor']['open'])}, Enter to result {cell(row['floor']['result'])}"
                    if args.floor
                    else ""
                ),
                flush=True,
            )
            for line in row["lost"] + row["server_problems"] + (row["floor"] or {}).get("lost", []):
                print(f"    {line}", flush=True)
    print()
    print(table(report.results))
    print("\nCPU seconds of the class by process:")
    for row in report.results:
        spent = ", ".join(f"{kind} {seconds:.1f}" for kind, seconds in row["cpu_by_kind"].items())
        print(f"- {row['visitors']} visitors: {spent}")
    largest = max(report.results, key=lambda row: row["visitors"])
    print(f"\nGoals (set for 20 visitors on 2 cores), at {largest['visitors']} visitors:")
    for line in goals(largest):
        print(f"- {line}")
    print(report.finish(args.json))
    return 0 if all(row["answered"] == row["uploads"] for row in report.results) else 1


if __name__ == "__main__":
    sys.exit(main())
