from p2pdist.cli.main import main

raise SystemExit(main())
