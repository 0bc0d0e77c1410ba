"""Sub-commands of the `mbsnet` command line, one module each (discovered automatically)."""
