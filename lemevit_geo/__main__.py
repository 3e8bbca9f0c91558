"""``python -m lemevit_geo`` runs the command-line tool."""

from lemevit_geo.cli import main

main()
