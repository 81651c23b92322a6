"""Schemathesis hooks (loaded through ``SCHEMATHESIS_HOOKS``) for what it cannot generate.

``PATCH /tus/{id}`` takes raw bytes (``application/offset+octet-stream``): any bytes.
``POST /bundles`` takes ``application/vnd.putplace.bundle``, a binary framing schemathesis
has no serializer for. The strategy draws well-framed bundles (with members that match
their hashes, that do not, or lengths that lie), bodies cut short and arbitrary bytes, so
the framing parser meets both honest and hostile input.
"""

from __future__ import annotations

import hashlib
import struct

import schemathesis
from hypothesis import strategies as st

MAGIC = b"PPBNDL01"


@st.composite
def _framed(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
    header = bytearray(MAGIC + struct.pack(">I", len(members)))
    for content in members:
        digest = hashlib.sha256(content).digest()
        if draw(st.booleans()):
            digest = draw(st.binary(min_size=32, max_size=32))  # content that does not match
        length = len(content) + draw(st.sampled_from([0, 0, 0, 1, -1 if content else 0]))
        header += struct.pack(">32sQ", digest, length)
    body = bytes(header) + b"".join(members)
    cut = draw(st.integers(min_value=0, max_value=len(body)))
    return body if draw(st.booleans()) else body[:cut]


schemathesis.openapi.media_type(
    "application/vnd.putplace.bundle",
    st.one_of(_framed(), st.binary(max_size=256), st.just(MAGIC + b"\xff\xff\xff\xff")),
)

# tus PATCH bodies are raw bytes: any bytes, empty or not.
schemathesis.openapi.media_type("application/offset+octet-stream", st.binary(max_size=512))
