"""Reference servers for bench/service_bench.py, on the same stack as `striate serve` (uvicorn with
httptools and uvloop, FastAPI):

- `hello`: reads the body and answers a small JSON document: the HTTP floor, what any server on
  this stack pays per request before doing any work;
- `naive`: FastAPI + onnxruntime as a tutorial writes it: read the body, decode and preprocess
  (the same `striate.preprocess` code), run the session for one image, answer the top 5 as JSON.

    python bench/reference_servers.py hello --port 18800
    python bench/reference_servers.py naive --bundle exported/digits/1 --port 18801
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request


def hello_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/models/{name}/classify")
    async def classify(name: str, request: Request) -> dict:
        body = await request.body()
        return {"model": name, "bytes": len(body)}

    return app


def naive_app(bundle: Path) -> FastAPI:
    import onnxruntime as ort

    from striate.manifest import Manifest
    from striate.preprocess import decode_image, preprocess

    manifest = Manifest.load(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / manifest.graph), opts, providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.post("/v1/models/{name}/classify")
    async def classify(name: str, request: Request) -> dict:
        x = preprocess(decode_image(await request.body()), manifest.preprocessing)[None]
        logits = session.run([manifest.logits_output], {manifest.input.name: x})[0][0]
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        top = np.argsort(-probs)[:5]
        return {
            "model": name,
            "results": [[{"label": manifest.labels[i], "index": int(i), "probability": float(probs[i])} for i in top]],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["hello", "naive"])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = hello_app() if args.kind == "hello" else naive_app(args.bundle)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", http="httptools", loop="uvloop")


if __name__ == "__main__":
    main()
