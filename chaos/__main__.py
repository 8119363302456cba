from chaos.main import main

raise SystemExit(main())
