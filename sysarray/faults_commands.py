"""``sysarray faults generate`` and ``sysarray faults show`` (registered with ``sysarray.cli.subcommand``)."""
