"""Signing: keys (keys.py), cosign-format image signatures (cosign.py), DSSE attestations (dsse.py),
attaching and verifying them in a registry or OCI layout (release.py), admission policy (policy.py).

The signer is a small interface (``keys.Signer``): a private key file today; a KMS signer (Azure
Key Vault) is one more class with the same three members. Key material never leaves keys.py's
objects: nothing here prints, logs or writes a private key except ``keys.generate``.
"""
