"""The HTTP limit of bench/serving: a bare ASGI endpoint on uvicorn (httptools + uvloop, one process, the
same uvicorn settings as `loopline serve`) that answers every request with a constant prediction body,
without reading or parsing the request body. No Python server on this machine can answer faster, so
loopline's requests/s over this one is the share of the machine's HTTP capacity our scoring leaves.

Two more modes take that endpoint apart for bench/serving_floor: `--mode read` reads the whole body and
still answers the constant; `--mode compute` reads it and scores it with loopline's own steps inline on the
event loop (parse_body, the contract check, the compiled transform and the torch model of `--bundle`,
encode_predictions), without the serving layer around them (micro-batcher, metrics, inference log,
backpressure, routing).

    python -m bench._http_limit --port 8123 [--rows 1] [--mode constant|read|compute --bundle DIR]
"""

from __future__ import annotations

import argparse

import orjson


def make_app(rows: int, mode: str = "constant", bundle: str | None = None):
    body = orjson.dumps({"predictions": [0.5] * rows})
    score = _inline_scorer(bundle) if mode == "compute" else None
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
        if mode == "constant":
            await send(start)
            await send(done)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if score is None:
            await send(start)
            await send(done)
            return
        out = score(b"".join(chunks))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def _inline_scorer(bundle: str | None):
    """loopline's scoring steps for one request, in line: bytes in, the response body out."""
    if not bundle:
        raise SystemExit("--mode compute needs --bundle")
    from loopline.serving.model import load_bundle_model
    from loopline.serving.protocol import encode_predictions, parse_body

    model = load_bundle_model(bundle, name="floor", version="1", alias="champion", device="cpu")

    def score(raw: bytes) -> bytes:
        rows, errors = model.checker.check_batch([parse_body(raw)])
        if errors[0] is not None:
            raise errors[0]
        return encode_predictions(model.score(rows))

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rows", type=int, default=1, help="predictions in the constant answer")
    parser.add_argument("--mode", choices=["constant", "read", "compute"], default="constant")
    parser.add_argument("--bundle", default=None, help="a loopline bundle directory (--mode compute)")
    args = parser.parse_args()
    import uvicorn

    if args.mode == "compute":  # as `loopline serve` sets torch for its one model thread
        import torch

        torch.set_num_threads(1)
    uvicorn.run(
        make_app(args.rows, args.mode, args.bundle),
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
