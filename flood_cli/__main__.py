"""`python -m flood_cli` runs the same CLI as the `flood` console script."""

from flood_cli.cli.main import main

main()
