"""``python -m verirl ...``: the command line, as ``verirl ...`` (what torchrun's
``-m verirl train CONFIG.yaml`` starts in every process)."""

import sys

from verirl.cli import main

if __name__ == "__main__":
    sys.exit(main())
