"""Proof: verify (image vs lock), smoke (a real container serves), doctor (static rules)."""
