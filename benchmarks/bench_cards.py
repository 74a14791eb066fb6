"""What drawing the main page's image cards as one `st.html` element each saves N browsers opening a page at once,
against drawing them with Streamlit's own elements (as the page did before), beside the floor: a page of three small
tables, what any Streamlit page costs.

    python benchmarks/bench_cards.py [--visitors 20] [--repeats 3] [--pause 15] [--json PATH]

Three pages, each served by `streamlit run` on 127.0.0.1: the floor; three cards as Streamlit elements (a bordered
container, three columns, two `st.image`, the true label and `st.table`); the same three cards as HTML
(`encvit.demo.card.image_card`). The cards hold the shipped samples fashion-0..2 and their encryption with the demo
key, enlarged 6x as the app shows them, and a table of four runs. After one first visit, `--visitors` headless
Chromium contexts on this machine open the page at once and wait for its third table (tests/browser/classroom.py).
The pages take turns, `--repeats` times each, with `--pause` seconds between two classes (so that the last one's
processes are gone). Reported per page: the visitors' page open, median (min–max) over every
visit, and the ratio of each round's median to that of the cards as Streamlit elements.
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
from browser.classroom import class_visit  # noqa: E402
from browser.server import page_files, serve_app  # noqa: E402

from encvit.common.timing import Report, markdown_table, ratios, spread_cell, summarize  # noqa: E402

CARDS = """import pandas as pd
import streamlit as st

from encvit.cipher import Key
from encvit.cipher.images import load_image, png_bytes
from encvit.common.shipped import DEMO_PASSPHRASE, SAMPLES_DIR
from encvit.demo.card import CARD_CSS, image_card
from encvit.demo.home import enlarge

st.set_page_config(layout="wide")
st.title("Classifying encrypted images")
key = Key.generate(4, 3, passphrase=DEMO_PASSPHRASE)
runs = ["full-encrypted", "melo-encrypted", "proposed-encrypted", "proposed-plain"]
table = pd.DataFrame(
    {{"run": runs, "sees": ["encrypted"] * 3 + ["plain"], "top-1": ["Coat 90%"] * 4, "top-2": ["Shirt 5%"] * 4,
     "top-3": ["Bag 1%"] * 4, "correct": ["✓"] * 4}}
).set_index("run")
for index in range(3):
    name = f"fashion-{{index}}.png"
    array = load_image(SAMPLES_DIR / name, channels=3)
    plain, encrypted = png_bytes(enlarge(array, 6)), png_bytes(enlarge(key.encrypt(array), 6))
{draw}
"""
DRAW = {
    "Streamlit elements": """    with st.container(border=True):
        left, middle, right = st.columns([1, 1, 3])
        left.image(plain, caption=name, output_format="PNG")
        middle.image(encrypted, caption=f"encrypted with {key.fingerprint}", output_format="PNG")
        right.markdown("True label: **Coat**")
        right.table(table)""",
    "HTML": """    if index == 0:
        st.html(CARD_CSS)
    st.html(image_card(name, plain, encrypted, key.fingerprint, label="Coat", table=table))""",
}
FLOOR = """import streamlit as st

st.title("Three tables")
for _ in range(3):
    st.table({"run": ["a run"], "top-1": ["a class 90%"]})
"""
PAGES = {
    "floor: three small tables": FLOOR,
    "cards as Streamlit elements": CARDS.format(draw=DRAW["Streamlit elements"]),
    "cards as HTML (the app)": CARDS.format(draw=DRAW["HTML"]),
}
BASELINE = "cards as Streamlit elements"


def page_opens(app: Path, visitors: int, folder: Path, timeout: float) -> list[float]:
    """Seconds each of `visitors` took to open `app` at once, after one first visit; every visitor must see it."""
    with serve_app(folder / f"{app.stem}.log", app=app) as server:
        class_visit(server.url, 1, 0, folder, timeout)
        visits = class_visit(server.url, visitors, 0, folder, timeout)
        problems = [v.problem for v in visits if v.problem] + server.problems()
    if problems:
        raise RuntimeError(f"{app.name}: {problems[0]}")
    return [v.open_seconds for v in visits]


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--visitors", type=int, default=int(env("ENCVIT_BENCH_VISITORS", 20)), help="visitors at once (default 20)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three pages, taking turns (default 3)")
    parser.add_argument("--pause", type=float, default=15.0, help="seconds between two classes (default 15)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a visitor waits for the page")
    parser.add_argument("--json", metavar="PATH", help="also write the report, every visit included, as JSON")
    args = parser.parse_args(argv)
    if args.visitors < 1 or args.repeats < 1 or args.timeout <= 0 or args.pause < 0:
        parser.error("--visitors and --repeats at least 1, a positive --timeout and --pause at least 0")
    try:
        find_chromium()
    except ChromiumNotFound as exc:
        parser.error(str(exc))
    report = Report("benchmarks/bench_cards.py", list(sys.argv[1:] if argv is None else argv), vars(args))
    print(report.header(), flush=True)
    opens: dict[str, list[float]] = {name: [] for name in PAGES}
    medians: dict[str, list[float]] = {name: [] for name in PAGES}
    with tempfile.TemporaryDirectory(prefix="encvit-bench-cards-") as folder:
        apps = page_files(folder, PAGES)
        for round_ in range(1, args.repeats + 1):
            for name, app in apps.items():  # taking turns, so that the machine's drift touches every page alike
                time.sleep(args.pause)
                seconds = page_opens(app, args.visitors, Path(folder), args.timeout)
                opens[name] += seconds
                medians[name].append(summarize(seconds).median)
                print(f"  round {round_}, {name}: page open median {medians[name][-1]:.1f} s", flush=True)
    per_round = ratios(medians, BASELINE)
    report.results.append(
        {
            "opens": opens,
            "round_medians": medians,
            "summaries": {name: summarize(values).to_dict() for name, values in opens.items()},
            "ratios": {name: summarize(values).to_dict() for name, values in per_round.items()},
        }
    )
    rows = [
        [name, spread_cell(summarize(opens[name]), " s", digits=1), spread_cell(summarize(per_round[name]), "x")]
        for name in PAGES
    ]
    print(markdown_table([f"page ({args.visitors} visitors at once)", "page open", f"ratio to {BASELINE}"], rows))
    print(report.finish(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
