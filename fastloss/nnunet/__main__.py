"""``python -m fastloss.nnunet``: see :mod:`fastloss.nnunet.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
