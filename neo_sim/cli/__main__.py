import sys

from neo_sim.cli import main

sys.exit(main())
