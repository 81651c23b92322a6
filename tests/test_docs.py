"""The README must stay true: every setting and every route is documented."""

from __future__ import annotations

from pathlib import Path

from putplace.config import Settings
from putplace.server.app import create_app

#: The only operations anyone may call without a key (tus discovery is open by design).
OPEN = {("get", "/"), ("get", "/health"), ("options", "/tus/")}
README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [
        f"PUTPLACE_{name.upper()}"
        for name in Settings.model_fields
        if f"`PUTPLACE_{name.upper()}`" not in README
    ]
    assert missing == []


def test_every_route_is_in_the_readme_and_openapi(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db"))
    schema = app.openapi()
    for path, operations in schema["paths"].items():
        documented = path.replace("{key_id}", "{id}")
        assert documented.split("{")[0] in README, path
        for method, operation in operations.items():
            assert operation.get("summary"), f"{path} has no summary"
            if (method, path) in OPEN:
                continue
            # Everything else needs a key, and says so: the padlock in /docs and the
            # refusals a client must expect.
            assert operation.get("security"), f"{method} {path} does not require a key"
            assert {"401", "403", "503"} <= set(operation["responses"]), f"{method} {path}"
