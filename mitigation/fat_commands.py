"""`sysarray` subcommands for the fat methods (registered with `sysarray.cli.subcommand`)."""
