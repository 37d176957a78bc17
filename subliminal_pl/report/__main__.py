"""`python -m subliminal_pl.report --manifest manifest.json --output_dir DIR`."""

import sys

from subliminal_pl.report import main

main(sys.argv[1:])
