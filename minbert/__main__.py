import sys

from minbert.cli import main

if __name__ == "__main__":
    sys.exit(main())
