"""Command-line interface: one module per command, each calling one library function."""
