"""OCI side: deterministic layers, config/manifest, and the ways out (layout, docker archive,
registry, daemon). See docs/image-layout.md for the determinism recipe."""
