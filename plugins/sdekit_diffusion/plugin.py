"""Entry point of the plugin (group ``sdekit.plugins``, name ``diffusion``)."""
from __future__ import annotations


def register(subparsers=None) -> None:
    """Called by the ``sdekit`` console script with its argparse ``subparsers`` object.

    The diffusion sub-commands ``train`` and ``sample`` will be added here; for now this adds
    nothing and returns ``None``.
    """
    return None
