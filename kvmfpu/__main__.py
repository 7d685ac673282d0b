from kvmfpu.cli import main

raise SystemExit(main())
