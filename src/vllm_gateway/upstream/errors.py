"""How far a request to a backend got when it failed."""

from __future__ import annotations


class UpstreamError(Exception):
    """The request to the backend failed; the message says how."""


class NotSent(UpstreamError):
    """Nothing of the request left this process: sending it again cannot run it twice."""


class ConnectionLost(UpstreamError):
    """The backend closed or reset the connection after the request was written."""


class BadResponse(UpstreamError):
    """The backend's answer is not valid HTTP/1.1."""
