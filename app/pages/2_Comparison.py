"""The comparison of the three methods on plain and encrypted images, and what each method trains.

The folder box and the results it names are one fragment: typing another folder reruns that part alone.
"""

from pathlib import Path

import streamlit as st

from encvit.common.errors import EncvitError
from encvit.demo import home as demo
from encvit.demo.access import app_access
from encvit.demo.serving import QUIET_STATUS_CSS
from encvit.experiments.compare import load_results
from encvit.models import shipped_comparison
from encvit.models.methods import PAPER_UNIT

st.set_page_config(page_title="encvit comparison", page_icon="📊", layout="wide")
st.html(QUIET_STATUS_CSS)  # no 'Running...' animation in every waiting visitor's browser


@st.cache_resource(show_spinner=False)
def parameter_rows():
    """Parameter counts of the paper's ViT-B/16 and the shipped encvit-tiny (structure only, no weights)."""
    return demo.parameter_rows()


st.title("Full fine-tuning, MeLo and the proposed method")


@st.fragment
def results() -> None:
    """The comparison folder's accuracy table, chart and summary, or one message on what is wrong with it."""
    folder = st.text_input(
        "Comparison folder (written by `encvit compare`)", value=str(shipped_comparison()), key="comparison_folder"
    )
    try:
        runs, summary, meta = load_results(app_access().folder(folder))
    except EncvitError as exc:
        st.error(demo.escape_markdown(exc))
    else:
        st.header("Test accuracy")
        st.markdown(
            (Path(folder) / "results.md").read_text()
            if (Path(folder) / "results.md").exists()
            else f"Backbone {demo.escape_markdown(meta.get('backbone'))}, "
            f"dataset {demo.escape_markdown(meta.get('dataset'))}."
        )
        if (Path(folder) / "results.png").exists():
            st.image(str(Path(folder) / "results.png"), caption="results.png")
        with st.expander("Per-cell summary (summary.csv)"):
            st.dataframe(summary, hide_index=True)


results()

st.header("Trainable parameters")
st.caption(
    f"For a 10-class head. The paper counts in M = 2^20 = {PAPER_UNIT:,}; its 82.56M for full fine-tuning "
    "is ViT-B/16 with its 1000-class ImageNet head (last row)."
)
st.table(
    parameter_rows()
    .style.format(
        {
            "trainable": "{:,}",
            "millions (10^6)": "{:.4g}",
            "paper M (2^20)": "{:.4g}",
            "% of full": "{:.2f}",
            "paper (ViT-B/16)": "{:.2f}",
        },
        na_rep="",
    )
    .hide(axis="index")
)
