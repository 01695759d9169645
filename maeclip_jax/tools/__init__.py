"""Command-line tools (python -m maeclip_jax.tools.NAME)."""
