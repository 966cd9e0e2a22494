"""Signing: keys (keys.py), cosign-format image signatures (cosign.py), DSSE attestations (dsse.py),
a registry repository or OCI layout as one store (store.py), signing and verifying both
(release.py), admission policy (policy.py).

The signer is a small interface (``keys.Signer``): a private key file today; a KMS signer (Azure
Key Vault) is one more class with the same members (key_id, deterministic, sign, public_pem). Key
material never leaves keys.py's objects: nothing here prints, logs or writes a private key except
``keys.generate``.
"""
