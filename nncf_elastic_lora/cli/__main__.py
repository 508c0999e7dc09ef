"""``python -m nncf_elastic_lora.cli``, as before the command line became a package."""

import sys

from . import main

sys.exit(main())
