"""The HTTP limit of bench/serving: a bare ASGI endpoint on uvicorn (httptools + uvloop, one process, the
same uvicorn settings as `loopline serve`) that answers every request with a constant prediction body,
without reading or parsing the request body. No Python server on this machine can answer faster, so
loopline's requests/s over this one is the share of the machine's HTTP capacity our scoring leaves.

    python -m bench._http_limit --port 8123 [--rows 1]
"""

from __future__ import annotations

import argparse

import orjson


def make_app(rows: int):
    body = orjson.dumps({"predictions": [0.5] * rows})
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    done = {"type": "http.response.body", "body": body}
    pong = {"type": "http.response.body", "body": b"\n"}
    pong_start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1")],
    }

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/ping":
            await send(pong_start)
            await send(pong)
            return
        await send(start)
        await send(done)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rows", type=int, default=1, help="predictions in the constant answer")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        make_app(args.rows),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
