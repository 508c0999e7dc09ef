"""``python -m nncf_elastic_lora``: the command line, also the form launchers take
(``accelerate launch -m nncf_elastic_lora train ...``, ``torchrun -m nncf_elastic_lora ...``)."""

import sys

from .cli import main

sys.exit(main())
