"""`python -m services.dashboard`: serve the dashboard with settings from the environment."""

from services.dashboard.app import serve
from shared.bootstrap import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings)
    serve(settings)
