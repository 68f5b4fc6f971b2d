"""``python -m flambe_cluster`` runs the command line."""

from .cli import main

main()
