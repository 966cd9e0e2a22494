"""lockbuild: MLflow model -> locked, reproducible, proven OCI image."""

__version__ = "0.1.0"
