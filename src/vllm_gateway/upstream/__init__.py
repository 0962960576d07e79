"""The proxy's HTTP/1.1 client: a keep-alive pool per backend and httptools' parser.

It does what forwarding needs and nothing else: a request with a body of known length
goes out in one write; the answer comes back as status, headers and body chunks (with a
length, chunked or up to the close). aiohttp's client, general-purpose, spent about a
third of the gateway's CPU per request on the proxy path (bench/README.md, "Profile").

Errors say how far the request got, which decides whether it may be sent again:
:class:`NotSent` (nothing left this process: connection refused, or a pooled connection
found closed before the write) is safe to retry; anything after the write is not, since
generation is not idempotent.
"""

from .connection import Response
from .errors import BadResponse, ConnectionLost, NotSent, UpstreamError
from .pool import Client, Pool, encode_head

__all__ = ["BadResponse", "Client", "ConnectionLost", "NotSent", "Pool", "Response",
           "UpstreamError", "encode_head"]
