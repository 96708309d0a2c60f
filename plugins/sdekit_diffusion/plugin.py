"""Entry point of the plugin (group ``sdekit.plugins``, name ``diffusion``)."""
from __future__ import annotations


def register(subparsers=None) -> None:
    """Called by the ``sdekit`` console script with its argparse ``subparsers`` object: adds the
    ``train`` and ``sample`` sub-commands and the diffusion problems of ``sdekit bench``."""
    from .bench_problems import register_bench_problems

    register_bench_problems()
    if subparsers is not None:
        from .cli import register as register_commands

        register_commands(subparsers)
