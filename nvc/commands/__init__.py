"""Subcommands of the `nvc` CLI, one module per concern."""
