"""The lock stage: the only caller of the resolvers (create.py), re-derivation (audit.py),
the per-wheel pruned lists (pruned.py)."""
