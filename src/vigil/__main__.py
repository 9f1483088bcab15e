from vigil.cli.main import main

raise SystemExit(main())
