"""A tenant's backend, as small as it gets: it keeps the vcstream API key on the server side and hands a
browser a short-lived access token for it.

    VCSTREAM_URL=https://voice.example VCSTREAM_API_KEY=vcs_... python examples/token_backend.py

``POST /token`` asks the vcstream server (``POST /api/tokens``, with the API key as Bearer) for a token
and returns its JSON (``token``, ``expires_at``, ``tenant_id``). ``GET /`` is an example page that
fetches a token and opens vcstream's page with it (``#token=...``). A real site checks who its user is
before ``/token`` answers (its own login session): anyone who can reach it can spend the tenant's
minutes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

VCSTREAM_URL_KEY: web.AppKey[str] = web.AppKey("vcstream_url", str)
API_KEY_KEY: web.AppKey[str] = web.AppKey("api_key", str)
TTL_KEY: web.AppKey[int] = web.AppKey("ttl_s", int)
HTTP_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)

#: the example page: gets a token from this backend, then opens the voice page with it
PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Change your voice</title>
<body style="margin:0">
<script>
  fetch("/token", { method: "POST" })
    .then((response) => response.json())
    .then(({ token }) => {
      const frame = document.createElement("iframe");
      frame.allow = "microphone";
      frame.style = "border:0;width:100vw;height:100vh";
      frame.src = `%(vcstream)s/#token=${encodeURIComponent(token)}`;
      document.body.append(frame);
    });
</script>
</body>
</html>
"""


async def token(request: web.Request) -> web.Response:
    """A fresh access token for the browser (the API key never leaves this backend)."""
    app = request.app
    async with app[HTTP_KEY].post(
        f"{app[VCSTREAM_URL_KEY]}/api/tokens",
        json={"ttl_s": app[TTL_KEY]},
        headers={"Authorization": f"Bearer {app[API_KEY_KEY]}"},
    ) as response:
        body = await response.json()
        if response.status != 201:
            # the browser learns that there is no token, not the vcstream server's details
            return web.json_response({"error": "no_token"}, status=502)
    return web.json_response(body)


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE % {"vcstream": request.app[VCSTREAM_URL_KEY]}, content_type="text/html")


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    app[HTTP_KEY] = aiohttp.ClientSession()
    yield
    await app[HTTP_KEY].close()


def create_app(vcstream_url: str, api_key: str, ttl_s: int = 600) -> web.Application:
    app = web.Application()
    app[VCSTREAM_URL_KEY] = vcstream_url.rstrip("/")
    app[API_KEY_KEY] = api_key
    app[TTL_KEY] = ttl_s
    app.cleanup_ctx.append(_http_session)
    app.router.add_post("/token", token)
    app.router.add_get("/", page)
    return app


def main() -> None:
    app = create_app(
        os.environ["VCSTREAM_URL"],
        os.environ["VCSTREAM_API_KEY"],
        int(os.environ.get("TOKEN_TTL_S", "600")),
    )
    web.run_app(app, port=int(os.environ.get("PORT", "8090")))


if __name__ == "__main__":
    main()
