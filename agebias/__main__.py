"""``python -m agebias`` (also ``torchrun ... -m agebias finetune ...``)."""

import sys

from agebias.cli import main

sys.exit(main())
