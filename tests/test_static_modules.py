"""The browser client is plain ES modules served as they are (no bundler): the page loads one module
entry, every module is served with a JavaScript content type (browsers refuse a module served as
anything else), and every relative import names a module the server has."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from vcstream.engines.passthrough import PassthroughEngine
from vcstream.service.app import STATIC_DIR, create_app
from vcstream.service.config import ServiceSettings

#: the MIME types the HTML standard accepts for a module script
JAVASCRIPT_TYPES = {"text/javascript", "application/javascript", "application/x-javascript"}
IMPORT = re.compile(r"""^import\s+(?:[^"']*?\s+from\s+)?["'](\./[\w.-]+)["'];""", re.MULTILINE)


def test_every_module_of_the_page_is_served_as_javascript_and_its_imports_resolve(tmp_path: Path) -> None:
    modules = sorted(path.name for path in STATIC_DIR.glob("*.js"))
    assert "app.js" in modules and len(modules) > 1

    async def main() -> None:
        app = create_app(ServiceSettings(port=0, data_dir=tmp_path), PassthroughEngine())
        async with TestClient(TestServer(app)) as client:
            page = await (await client.get("/")).text()
            entries = re.findall(r'<script type="module" src="/static/([\w.-]+)"></script>', page)
            assert entries == ["app.js"], "the page loads one module entry"
            assert "<script" not in page.replace('<script type="module" src="/static/app.js"></script>', "")
            reached, queue = set(), ["app.js"]
            while queue:  # the module graph as a browser walks it, from the entry
                name = queue.pop()
                if name in reached:
                    continue
                reached.add(name)
                response = await client.get(f"/static/{name}")
                assert response.status == 200, name
                assert response.content_type in JAVASCRIPT_TYPES, (name, response.content_type)
                source = await response.text()
                queue.extend(target.removeprefix("./") for target in IMPORT.findall(source))
            assert reached == set(modules), "every module is reached from the entry, and only those"

    asyncio.run(main())
