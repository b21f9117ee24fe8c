"""``python -m latent_diffusion`` is the same as ``ldm``."""

import sys

from latent_diffusion.cli import main

sys.exit(main())
