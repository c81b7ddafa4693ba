"""The mitigation subcommands of ``sysarray`` (a CLI plugin, see ``sysarray.cli.PLUGIN_MODULES``).

Each method family registers its own parsers in its own module; importing them here is what adds
them to the ``sysarray`` command.
"""
from mitigation import clip_commands, demo_commands, fat_commands, yield_commands  # noqa: F401  (registers subcommands)
from mitigation.campaign import commands as campaign_commands  # noqa: F401  (registers subcommands)
