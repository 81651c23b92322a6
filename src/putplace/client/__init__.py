"""The ppclient command: walk, hash, register, upload."""

import sys

# httpx imports its own command-line tool (click, pygments, rich.syntax) whenever those
# happen to be installed, as they are beside the server: 130 ms of every ppclient run,
# measured with -X importtime. A None entry makes that one optional import fail, which
# httpx handles; nothing of the library itself is affected.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
