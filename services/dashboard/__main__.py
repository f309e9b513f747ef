"""`python -m services.dashboard`: the dashboard with settings from the environment (as `emotion dashboard`)."""

from services.dashboard.run import run
from shared.bootstrap import service_main

if __name__ == "__main__":
    service_main("dashboard", run)
