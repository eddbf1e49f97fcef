"""The jupyter_server extension (see app.OrionJupyter)."""

from .app import OrionJupyter

__all__ = ["OrionJupyter"]
