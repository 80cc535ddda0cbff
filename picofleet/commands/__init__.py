"""Subcommands of the `picofleet` command line, one module each (add_parser + run)."""
