"""``python -m amoconnect``: the same as the ``amoconnect`` command."""

from .cli import main

main()
