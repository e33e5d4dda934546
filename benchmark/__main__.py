import sys

from .cli import main

if __name__ == "__main__":      # not when a spawned worker process (benchmark.parallel) imports this module
    sys.exit(main())
