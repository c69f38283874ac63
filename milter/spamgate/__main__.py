"""`python -m spamgate`: the same as the `spamgate` command."""

from spamgate.commands.cli import main

raise SystemExit(main())
