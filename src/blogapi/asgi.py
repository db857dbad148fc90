"""The app object for ASGI servers (`uvicorn blogapi.asgi:app`, `fastapi run`)."""

from blogapi.main import create_app

app = create_app()
