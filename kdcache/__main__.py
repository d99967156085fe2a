import sys

from kdcache.cli import main

sys.exit(main())
