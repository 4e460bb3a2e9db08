"""`python -m client ...`: the command-line client."""

from client.cli import main

raise SystemExit(main())
