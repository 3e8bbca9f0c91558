"""``python -m lemevit_geo`` runs the command-line tool."""

from lemevit_geo.cli import main

if __name__ == "__main__":  # worker processes spawned by Dask import this module again: they must not run the CLI
    main()
