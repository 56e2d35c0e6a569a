import sys

from vox_flow.cli import main

sys.exit(main())
