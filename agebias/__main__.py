"""``python -m agebias`` (also ``torchrun ... -m agebias finetune ...``)."""

from agebias.cli import run

run()
