"""Command-line tools that are not the trainer (cost report, ...)."""
