"""Who may see or stop what: exact user names, never label slugs."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider


def names_are_people(identity_provider: Any) -> bool:
    """False for jupyter_server's own token/password login, which names each token request anew
    (a made-up anonymous user): such a server is one person."""
    return type(identity_provider) not in (IdentityProvider, PasswordIdentityProvider)


class Access:
    """Identity decisions of the server extension (``app`` is the OrionJupyter extension).

    With a real identity (JupyterHub, or any identity provider that names people) each request's
    user owns the kernels it starts; a plain server (``orion-jupyter lab``, a workstation) is one
    person, so every request of it acts as the server's user.
    """

    def __init__(self, app: Any, *, server_user: str, one_person: bool):
        self.app = app
        self.server_user = server_user
        self.one_person = one_person

    def is_instructor(self, user: Any) -> bool:
        """By the name the request acts as: on a one-person server the server's user (token logins are anonymous)."""
        groups = (getattr(user, "hub_user", None) or {}).get("groups") or []
        return self.app.is_instructor_named(self.kernel_user(user), groups)

    def kernel_user(self, user: Any) -> str:
        """The name kernels started by this request's user carry."""
        return self.server_user if self.one_person else user.username

    def owns(self, user: Any, kernel_user: str) -> bool:
        if self.is_instructor(user) or kernel_user == self.kernel_user(user):
            return True
        # Kernels started through Jupyter's own API carry the server's user: they are the owner's.
        owner = self.app.server_owner
        return kernel_user == self.server_user and owner in ("", user.username)
