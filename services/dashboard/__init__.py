"""The dashboard service: a multi-page Dash app over the live streams, the event store and the trainer.

`services.dashboard.app.create_app(settings)` builds it; `emotion dashboard` serves it.
"""
