"""The generation core (admit, budget, generate, collect) and one module per endpoint."""
