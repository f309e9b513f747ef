"""`python -m services.recorder`: the recorder with settings from the environment (same as `emotion recorder`)."""

import sys

from services.recorder.run import run
from shared.bootstrap import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings)
    sys.exit(run(settings))
