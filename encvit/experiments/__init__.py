"""Grids of runs and where they execute: the method comparison, the data-size and security studies, parallel
runs on this machine (`--jobs`) and on a Ray cluster (`--address`)."""
