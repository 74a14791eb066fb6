"""The app's logic and the notebooks' figures: the demo's home page, the attacker's view, which runs a visitor may
read, and the drawings of blocks and keys."""
