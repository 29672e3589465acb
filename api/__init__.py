"""The hugie HTTP service (FastAPI): ``create_app(settings | extractor=...)``; ``hugie serve`` runs it."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
