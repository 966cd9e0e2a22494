"""The lock file every stage reads: its data types (model.py), deterministic TOML (io.py), the
pylock.toml export (pylock.py), the meaning of its [build] rules (prune.py) and the layer
compressor it pins (codec.py). It imports no stage: resolve/, lock/, fetch/, assemble/, oci/,
verify/ and audit/ all import it downward."""
