"""Request paths, decided once (pure: no I/O, no aiohttp).

The gateway routes on a path and forwards a path; both must be the same string,
or a client can route as ``/v1/*`` and reach another route of the model server
(``/v1/../sleep``, ``/v1/%2e%2e/collective_rpc``). So the raw request target is
decoded and normalised here, once: percent escapes (in any case), backslashes
read as slashes, duplicate slashes collapsed. What could mean two different
paths to two readers is refused rather than guessed at: an encoded slash or
backslash, any dot segment (``.`` or ``..``, even one inside ``/v1/``, or
``..;``, which some servers read as ``..``), a percent escape that decodes to
another escape, a control character, bytes that are not UTF-8, a target that
is not a path, and a path that normalising changed (duplicate slashes,
backslashes): the refusal names the form to send. What is left is one path
that every reader agrees on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from ..errors import BadRequest

# Escapes of "/" and "\": a server that decodes them would see other segments than we do.
_ENCODED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f%\\]")
# RFC 3986 pchar: kept as they are when the path is written back out.
_SAFE = "/:@!$&'()*+,;=-._~"


class InvalidPath(BadRequest):
    code = "invalid_path"


@dataclass(frozen=True)
class RequestPath:
    path: str  # decoded and normalised: what the gateway routes and decides on
    query: str  # the raw query string, without its "?"; "" when there is none

    @property
    def target(self) -> str:
        """The path written back out (escaped) with its query: what is forwarded."""
        encoded = quote(self.path, safe=_SAFE)
        return f"{encoded}?{self.query}" if self.query else encoded

    def under(self, prefix: str) -> bool:
        """True when the path lies below ``prefix`` (which ends with "/")."""
        return self.path.startswith(prefix) and len(self.path) > len(prefix)


def _refuse(raw: str, why: str) -> InvalidPath:
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    return InvalidPath(f"the request path {shown!r} is refused: {why}")


def _decode(raw: str, path: str) -> str:
    try:
        decoded = unquote_to_bytes(path.encode("utf-8", "surrogateescape")).decode("utf-8")
    except UnicodeError:
        raise _refuse(raw, "it is not UTF-8 once decoded") from None
    if "%" in decoded:
        raise _refuse(raw, "it holds a '%' that is not an escape, or an escape of an escape")
    return decoded


def normalise(raw: str) -> RequestPath:
    """The path of a raw request target (``request.raw_path``), or InvalidPath (a 400)."""
    path, _, query = raw.partition("?")
    if not path.startswith("/"):
        raise _refuse(raw, "the request target must be a path starting with '/'")
    if "#" in path:
        raise _refuse(raw, "it holds a fragment")
    if _ENCODED_SLASH.search(path):
        raise _refuse(raw, "it holds an encoded slash or backslash")
    decoded = _decode(raw, path)
    if _CONTROL.search(decoded):
        raise _refuse(raw, "it holds a control character")
    segments = decoded.replace("\\", "/").split("/")
    if any(_dot(s) for s in segments):
        raise _refuse(raw, "it holds a dot segment ('.' or '..')")
    normalised = "/" + "/".join(s for s in segments if s)
    if segments[-1] == "" and normalised != "/":
        normalised += "/"
    if normalised != decoded:
        # Collapsing slashes changes what another server routes on: ask for the one form.
        raise _refuse(raw, f"duplicate slashes or backslashes; send {normalised!r}")
    return RequestPath(normalised, query)


def _dot(segment: str) -> bool:
    # "..;x" is ".." to servers that strip path parameters (Tomcat, some proxies).
    return segment.split(";", 1)[0] in (".", "..")


def name_path(name: str) -> str:
    """A model name written into a URL path, escaped; its slashes stay path separators
    (``org/model``), since an escaped slash is refused. ValueError when the name cannot
    be written so: an empty or dot segment, a backslash, a "%" (its escape would be
    refused as an escape of an escape) or a control character."""
    parts = name.split("/")
    if any(p == "" or _dot(p) for p in parts) or _UNWRITABLE.search(name):
        raise ValueError(f"model name {name!r} cannot be part of a URL path")
    return "/".join(quote(p, safe="") for p in parts)
