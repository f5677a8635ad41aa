"""Compare runs: python report.py PATH [PATH ...] [--out DIR] writes report.md and val_rouge.png (see encdec.report)."""

import sys

from encdec.report import main

if __name__ == "__main__":
    sys.exit(main())
