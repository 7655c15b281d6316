import sys

from search.cli.main import main

sys.exit(main())
