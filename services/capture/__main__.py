"""`python -m services.capture`: the capture with settings from the environment (as `emotion capture`)."""

from services.capture.run import run
from shared.bootstrap import service_main

if __name__ == "__main__":
    service_main("capture", run)
