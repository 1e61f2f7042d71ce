"""``python -m organet.cli ...`` runs the ``organet`` command."""

from organet.cli import main

main()
