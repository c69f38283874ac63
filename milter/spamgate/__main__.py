"""`python -m spamgate`: the same as the `spamgate` command."""

from spamgate.cli import main

raise SystemExit(main())
