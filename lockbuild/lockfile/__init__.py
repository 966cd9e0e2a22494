"""The lock file every stage reads: its data types (model.py), deterministic TOML (io.py), the
pylock.toml export (pylock.py) and the meaning of its [build] rules (prune.py). It imports no
stage: resolve/, lock/, fetch/, assemble/, verify/ and audit/ all import it downward."""
