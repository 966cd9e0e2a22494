"""MLflow model intake: URI -> local tree (intake.py), metadata (metadata.py)."""
