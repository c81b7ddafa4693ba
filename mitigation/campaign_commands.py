"""`sysarray` subcommands for the campaign methods (registered with `sysarray.cli.subcommand`)."""
