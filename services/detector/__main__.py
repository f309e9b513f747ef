"""`python -m services.detector`: the detector with settings from the environment (as `emotion detector`)."""

from services.detector.run import run
from shared.bootstrap import service_main

if __name__ == "__main__":
    service_main("detector", run)
