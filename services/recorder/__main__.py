"""`python -m services.recorder`: the recorder with settings from the environment (as `emotion recorder`)."""

from services.recorder.run import run
from shared.bootstrap import service_main

if __name__ == "__main__":
    service_main("recorder", run)
