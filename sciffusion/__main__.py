import sys

from sciffusion.cli import main

sys.exit(main())
