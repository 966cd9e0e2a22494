"""The registry as a shared, trusted build cache (``lockbuild image --cache-registry``), and cache
housekeeping.

  entry.py   what an entry is: the signed statement, its small OCI manifest and tag, the trust checks
  remote.py  registry I/O: look up, verify while reading, install into the local cache; push entries
  gc.py      ``lockbuild cache gc``: the local cache and the registry's cache tags
"""
