"""The app object for ASGI servers (`blogapi serve`, `uvicorn blogapi.asgi:app`, `fastapi run`)."""

import logging

from blogapi.main import create_app

# Servers configure their own loggers only; ours (errors, with tracebacks) go to stderr.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app()
