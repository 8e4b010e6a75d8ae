from tools.scenegen.cli import main

raise SystemExit(main())
