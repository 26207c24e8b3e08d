"""Who may connect and what they may do: signed access tokens, roles and per-action permissions.

A token is a JWT (PyJWT) signed with HS256 and the configured secret, or with
RS256/ES256 by a private key whose public half is configured. Claims:

- ``sub``: user id; ``name``: display name (optional; defaults to ``sub``)
- ``canvas``: the canvas id it grants, or a pattern where ``*`` matches any run
  of characters (``team-*``, ``*``)
- ``role``: ``viewer``, ``editor``, ``owner`` or ``admin`` (an owner who may also use the
  operator endpoints, e.g. ``GET /api/webhooks/deliveries``; needs ``canvas: "*"``)
- ``exp``: expiry (required)

With neither a secret nor a public key configured the server is in open
development mode: nobody authenticates and everyone may do everything.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt

from .errors import Forbidden, Unauthorized

ROLES = ("viewer", "editor", "owner", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
ACTIONS = ("read", "edit", "delete", "restore", "generate", "admin")
MIN_SECRET_BYTES = 32
CANVAS_CLAIM = re.compile(r"[A-Za-z0-9_*-]{1,64}")
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
SUBPROTOCOL = "canvashub"  # offered beside the token; the server selects it when present


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The caller: from a verified token, or the anonymous open-mode caller."""

    role: str
    canvas: str  # id or pattern the token grants
    user_id: str | None = None
    name: str | None = None
    expires_at: float | None = None
    permissions: frozenset[str] = frozenset(ACTIONS)
    authenticated: bool = False

    def covers(self, canvas_id: str) -> bool:
        return canvas_matches(self.canvas, canvas_id)

    def can(self, action: str) -> bool:
        return action in self.permissions

    @property
    def identity(self) -> dict[str, str] | None:
        """What presence shows for this caller (``user.id``/``user.name``), if a token says who it is."""
        if not self.authenticated or self.user_id is None:
            return None
        return {"id": self.user_id, "name": self.name or self.user_id}

    def describe(self) -> dict[str, Any]:
        """The ``access`` event an opted-in socket gets on join."""
        return {
            "type": "access",
            "role": self.role,
            "user": self.identity,
            "can": {action: self.can(action) for action in ACTIONS if action not in ("read", "admin")},
        }


OPEN = Principal(role="editor", canvas="*")  # open mode: an editor allowed every action


def canvas_matches(pattern: str, canvas_id: str) -> bool:
    if pattern == "*":  # open mode and all-canvas tokens: no regex per upgrade
        return True
    if "*" not in pattern:
        return pattern == canvas_id
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, canvas_id) is not None


def load_public_key(value: str) -> str:
    """``value`` is PEM text or the path of a PEM file."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return Path(value).read_text()


class Authenticator:
    """Verifies tokens and decides permissions. Built once by the composition root."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key: str = "",
        action_roles: Mapping[str, str] | None = None,
        leeway: float = 0.0,
    ) -> None:
        self.secret = secret.encode() if secret else b""
        if self.secret and len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"CANVASHUB_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        self.public_key = None
        self.public_algorithms: list[str] = []
        if public_key:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self.public_key = load_pem_public_key(load_public_key(public_key).encode())
            if isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_algorithms = ["RS256"]
            elif isinstance(self.public_key, ec.EllipticCurvePublicKey):
                self.public_algorithms = ["ES256"]
            else:
                raise ValueError("CANVASHUB_AUTH_PUBLIC_KEY must be an RSA or EC (P-256) public key")
        roles = {
            "read": "viewer",
            "edit": "editor",
            "delete": "owner",
            "restore": "owner",
            "generate": "owner",
            "admin": "admin",
        }
        for action, role in (action_roles or {}).items():
            if role not in RANK:
                raise ValueError(f"role for {action!r} must be one of {', '.join(ROLES)}, got {role!r}")
            roles[action] = role
        self.action_roles = roles
        self.leeway = leeway

    @property
    def open(self) -> bool:
        return not self.secret and self.public_key is None

    def permissions_of(self, role: str) -> frozenset[str]:
        return frozenset(action for action, least in self.action_roles.items() if RANK[role] >= RANK[least])

    def authenticate(self, token: str | None) -> Principal:
        """The caller behind ``token``; raises ``Unauthorized`` if it is missing or not valid now."""
        if self.open:
            return OPEN
        if not token:
            raise Unauthorized("an access token is required")
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            key: Any
            if algorithm == "HS256" and self.secret:
                key, algorithms = self.secret, ["HS256"]
            elif algorithm in self.public_algorithms:
                key, algorithms = self.public_key, self.public_algorithms
            else:
                raise Unauthorized(f"tokens signed with {algorithm!r} are not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "role", "canvas"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the access token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid access token: {exc}") from None
        role, canvas, sub, name = claims["role"], claims["canvas"], claims["sub"], claims.get("name")
        if not isinstance(role, str) or role not in RANK:
            raise Unauthorized(f"invalid access token: role must be one of {', '.join(ROLES)}")
        if not isinstance(canvas, str) or not CANVAS_CLAIM.fullmatch(canvas):
            raise Unauthorized("invalid access token: canvas must be a canvas id or a pattern with *")
        if (
            not isinstance(sub, str)
            or not sub
            or len(sub) > 200
            or (name is not None and (not isinstance(name, str) or len(name) > 200))
        ):
            raise Unauthorized("invalid access token: sub and name must be strings of at most 200 characters")
        return Principal(
            role=role,
            canvas=canvas,
            user_id=sub,
            name=name,
            expires_at=float(claims["exp"]),
            permissions=self.permissions_of(role),
            authenticated=True,
        )

    def authorize(self, principal: Principal, canvas_id: str | None, action: str) -> None:
        """Raise ``Forbidden`` unless ``principal`` may do ``action`` on ``canvas_id`` (None: on every canvas)."""
        if canvas_id is None:
            if principal.canvas != "*":
                raise Forbidden("this token is not valid for every canvas")
        elif not principal.covers(canvas_id):
            raise Forbidden(f"this token is not valid for canvas {canvas_id!r}")
        if not principal.can(action):
            raise Forbidden(f"role {principal.role!r} may not {action} (needs {self.action_roles[action]!r})")


def mint_token(
    key: Any,
    *,
    canvas: str,
    role: str,
    user: str,
    name: str | None = None,
    ttl: float = 3600.0,
    algorithm: str = "HS256",
    now: float | None = None,
) -> str:
    """A signed token (for development, tests and back ends that hand tokens to their users)."""
    if role not in RANK:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not CANVAS_CLAIM.fullmatch(canvas):
        raise ValueError("canvas must be a canvas id or a pattern with *")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "role": role, "canvas": canvas, "iat": int(issued), "exp": int(issued + ttl)}
    if name:
        claims["name"] = name
    return jwt.encode(claims, key, algorithm=algorithm)


TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` → seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None:
        raise ValueError(f"ttl must look like 90s, 15m, 1h or 7d, got {text!r}")
    return float(match.group(1)) * TTL_UNITS[match.group(2) or "s"]


def websocket_token(query: Iterable[tuple[str, str]], subprotocols: Iterable[str]) -> tuple[str | None, str | None]:
    """(token, subprotocol to select) from a WebSocket upgrade.

    The token comes as ``?token=`` or as an offered subprotocol (browsers cannot
    set headers on WebSockets). A browser fails the connection unless the server
    selects one of the offered subprotocols: ``canvashub`` if offered, else the token.
    """
    offered = list(subprotocols)
    token = next((value for key, value in query if key == "token" and value), None)
    offered_token = next((p for p in offered if TOKEN_SHAPE.fullmatch(p)), None)
    if token is None:
        token = offered_token
    selected = SUBPROTOCOL if SUBPROTOCOL in offered else offered_token if offered_token else None
    return token, selected


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
