"""The lock: data types (model.py), TOML read/write (io.py), staleness (check.py)."""
