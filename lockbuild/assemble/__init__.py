"""Assembly: staging directories that the OCI layer writer tars deterministically."""
