"""Model files: sources, the hub, preflight, memory estimates, file-format headers."""
