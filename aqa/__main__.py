import sys

from aqa.cli import main

sys.exit(main())
