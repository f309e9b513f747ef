"""The recorder service: emotion events -> SQL event store (see service.py)."""
