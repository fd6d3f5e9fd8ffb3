"""`python -m sentinel_keeper` runs the same CLI as the `sentinel-keeper` command."""

from sentinel_keeper.cli.main import main

raise SystemExit(main())
