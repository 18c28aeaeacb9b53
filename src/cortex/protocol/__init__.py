"""Wire types for the dialects cortex speaks. No I/O, nothing heavy imported."""
