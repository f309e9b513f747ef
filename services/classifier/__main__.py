"""`python -m services.classifier`: the classifier with settings from the environment (as `emotion classifier`)."""

from services.classifier.run import run
from shared.bootstrap import service_main

if __name__ == "__main__":
    service_main("classifier", run)
