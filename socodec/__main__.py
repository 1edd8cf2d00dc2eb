from socodec.cli import main

raise SystemExit(main())
