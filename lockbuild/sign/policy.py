"""Admission policy for signed images, built from one public key and the repositories it signs.

* containers-policy (``/etc/containers/policy.json`` + ``/etc/containers/registries.d/*.yaml``): what
  CRI-O, podman and skopeo nodes enforce. Each repository requires a ``sigstoreSigned`` signature by
  the key (``keyData``: the PEM inline, so the policy is one self-contained file) with
  ``signedIdentity: matchRepository`` (lockbuild signs the repository, not a tag); registries.d turns on
  ``use-sigstore-attachments`` for those repositories. Tested here with trixie's skopeo 1.18.
* Ratify + Gatekeeper (AKS image integrity): a ``KeyManagementProvider`` holding the key inline, a
  ``Store`` with cosign discovery, a cosign ``Verifier`` scoped to the repositories, and a Gatekeeper
  ``RatifyVerification`` constraint denying pods whose images do not verify. Their ConstraintTemplate
  comes with Ratify's chart. NOT tested in a live cluster here (see docs/audit.md).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import yaml

RATIFY_API = "config.ratify.deislabs.io/v1beta1"
GATEKEEPER_API = "constraints.gatekeeper.sh/v1beta1"


def _repositories(repos: Sequence[str]) -> list[str]:
    out = []
    for r in repos:
        name = r.removeprefix("docker://").split("@", 1)[0]
        last = name.rsplit("/", 1)
        if len(last) == 2 and ":" in last[1]:  # drop a tag, keep a registry port
            name = f"{last[0]}/{last[1].split(':', 1)[0]}"
        if name not in out:
            out.append(name)
    return out


def containers_policy(repos: Sequence[str], public_pem: bytes, *, others: str = "reject") -> dict[str, Any]:
    """policy.json: the repositories require a signature by the key; every other image: ``others``
    (``reject``, or ``accept`` for a node that also runs unsigned images)."""
    requirement = {"type": "sigstoreSigned", "keyData": base64.b64encode(public_pem).decode(),
                   "signedIdentity": {"type": "matchRepository"}}
    default = [{"type": "reject"}] if others == "reject" else [{"type": "insecureAcceptAnything"}]
    return {"default": default,
            "transports": {"docker": {repo: [requirement] for repo in _repositories(repos)}}}


def registries_d(repos: Sequence[str]) -> dict[str, Any]:
    """registries.d/lockbuild.yaml: read (and write) sigstore signatures as cosign-style attachments."""
    return {"docker": {repo: {"use-sigstore-attachments": True} for repo in _repositories(repos)}}


def ratify_manifests(repos: Sequence[str], public_pem: bytes, *, name: str, namespaces: Sequence[str] = ()) -> \
        list[dict[str, Any]]:
    """Ratify (key inline, cosign verifier per repository) and the Gatekeeper constraint enforcing it."""
    provider = f"{name}-key"
    scopes = _repositories(repos)  # Ratify matches a trust policy scope against the image's registry/repository
    match: dict[str, Any] = {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]}
    if namespaces:
        match["namespaces"] = list(namespaces)
    labels = {"app.kubernetes.io/managed-by": "lockbuild"}
    return [
        {"apiVersion": RATIFY_API, "kind": "KeyManagementProvider",
         "metadata": {"name": provider, "labels": labels},
         "spec": {"type": "inline", "parameters": {"contentType": "key", "value": public_pem.decode()}}},
        {"apiVersion": RATIFY_API, "kind": "Store", "metadata": {"name": f"{name}-store", "labels": labels},
         "spec": {"name": "oras", "parameters": {"cosignEnabled": True}}},
        {"apiVersion": RATIFY_API, "kind": "Verifier", "metadata": {"name": f"{name}-cosign", "labels": labels},
         "spec": {"name": "cosign", "artifactTypes": "application/vnd.dev.cosign.artifact.sig.v1+json",
                  "parameters": {"trustPolicies": [{"name": name, "scopes": scopes,
                                                    "keys": [{"provider": provider}], "tLogVerify": False}]}}},
        {"apiVersion": GATEKEEPER_API, "kind": "RatifyVerification",
         "metadata": {"name": f"{name}-signed", "labels": labels},
         "spec": {"enforcementAction": "deny", "match": match}},
    ]


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def render_yaml(docs: Sequence[dict[str, Any]], header: str) -> str:
    class _NoAlias(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        style = "|" if "\n" in data else None  # a PEM key as a literal block, as kubectl users write it
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    _NoAlias.add_representer(str, _str)

    body = "---\n".join(yaml.dump(d, Dumper=_NoAlias, sort_keys=False, default_flow_style=False) for d in docs)
    return f"# {header}\n" + body
