"""`python -m encdec COMMAND ...`: the installed `encdec` command (encdec.console), where no script is on PATH."""

import sys

from encdec.console import main

sys.exit(main())
