"""Resolution: Python wheels (python.py), Debian packages (debian.py), target runtime (runtime.py)."""
