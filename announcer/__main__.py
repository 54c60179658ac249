"""``python -m announcer`` is the same as the ``announcer`` command."""

from announcer.cli import main

raise SystemExit(main())
