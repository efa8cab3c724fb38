import sys

from gpt.cli import main

sys.exit(main())
