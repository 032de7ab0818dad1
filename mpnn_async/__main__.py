import sys

from mpnn_async.cli.main import main

sys.exit(main())
