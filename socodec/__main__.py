"""``python -m socodec``: the same as the ``socodec`` command."""

from socodec.cli import main

raise SystemExit(main())
