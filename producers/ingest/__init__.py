"""The HTTP ingest endpoint (`identify-queue serve`): Amplitude's /identify format, enqueued durably.

``server.py`` is the WSGI application and its waitress server; ``decide.py`` says what each
request means (pure); ``envelope.py`` reads form, multipart and JSON bodies; ``settings.py`` holds
its settings and tokens.
"""
