"""`python -m bsnnc` runs the command-line interface."""

from bsnnc.compiler.cli import main

raise SystemExit(main())
