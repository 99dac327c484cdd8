"""``python -m cmrstudio.cli``: the same as ``cmrstudio``."""

from cmrstudio.cli import main

main()
