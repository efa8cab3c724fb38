import sys

from tritongpt.cli import main

sys.exit(main())
