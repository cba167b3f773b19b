"""`python -m app` starts the desktop app."""

from .main import main

raise SystemExit(main())
