"""Signing keys (keys.py): ECDSA P-256 private keys sign, public keys verify."""
