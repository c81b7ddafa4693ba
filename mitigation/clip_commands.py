"""`sysarray` subcommands for the clip methods (registered with `sysarray.cli.subcommand`)."""
