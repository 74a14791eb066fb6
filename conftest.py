"""Test-suite settings shared by tests/ and the notebooks run under nbval."""

import os

# Notebooks and slow studies take their sizes from the environment: the test suite runs them small.
os.environ.setdefault("ENCVIT_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
