from costor.cli.main import main

raise SystemExit(main())
