"""Subcommands of the `emotion` CLI, one module per area; each exposes register(subparsers)."""
