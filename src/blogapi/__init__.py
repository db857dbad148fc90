"""blogapi: users and their posts over HTTP, on FastAPI and async SQLAlchemy."""

__version__ = "1.0.0"
