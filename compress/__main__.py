"""`python -m compress` is the same as the `compress` command."""

from compress.cli import main

raise SystemExit(main())
