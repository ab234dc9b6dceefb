"""`python -m magnn ...` runs the `magnn` command line."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
