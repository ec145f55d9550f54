"""`chestxray serve`: the model over HTTP (FastAPI), with micro-batching, limits and a page to try it.

Routes: POST /predict (multipart images -> JSON per image; ?explain=1 adds a Grad-CAM overlay),
GET /health, GET /ready, GET /model (contract and model card), GET /metrics (Prometheus), GET / (page).

Uploads are sniffed by content, written only into a per-request temporary folder that is removed, and
read by the same reader as the CLI. Concurrent requests are grouped into one forward pass (up to
`max_batch` images): requests that arrive while the model runs form the next batch, and while requests
arrive together (the last batch held several) the batcher also waits up to `max_wait_ms` for more; a lone
request is never held back. Every bad request gets a 4xx with a JSON
body {"error": ...} naming the file and the problem, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from ..config import ServeConfig
from ..data.cache import decode_resized
from ..data.io import XrayReadError, sniff
from ..data.quality import OK, image_quality
from ..files import sha256
from ..models.lungs import fields_found, lungs_found
from ..notices import RESEARCH_NOTE
from ..notices import VERSION as __version__
from .engines import load_on, lung_model_on

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = ServeConfig.max_upload_mb  # the limits are declared once, with their help, in config.ServeConfig
MAX_FILES = ServeConfig.max_files
MAX_BATCH = ServeConfig.max_batch
MAX_WAIT_MS = ServeConfig.max_wait_ms  # under concurrent load only: a lone request never waits
API_KEY_ENV = "CHESTXRAY_API_KEY"
STATIC = Path(__file__).parent / "static"



class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Pending:
    image: np.ndarray
    future: asyncio.Future


@dataclass
class MicroBatcher:
    """Groups images from concurrent requests into one forward pass."""

    run_batch: object  # callable: list of images -> list of per-image results
    max_batch: int = MAX_BATCH
    max_wait_s: float = MAX_WAIT_MS / 1000
    on_batch: object = None  # callable(batch size), for metrics
    queue: asyncio.Queue | None = None
    task: asyncio.Task | None = None
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="chestxray-model"))

    async def submit(self, images: list[np.ndarray]) -> list[dict]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._worker())
        pending = [_Pending(img, loop.create_future()) for img in images]
        for p in pending:
            self.queue.put_nowait(p)
        return [await p.future for p in pending]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        concurrent = False  # did the last batch hold more than one image (requests are arriving together)?
        while True:
            batch = [await self.queue.get()]
            concurrent = concurrent or not self.queue.empty()
            # a lone request goes at once; under concurrent load, wait up to max_wait for the batch to fill
            deadline = loop.time() + (self.max_wait_s if concurrent else 0.0)
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            concurrent = len(batch) > 1
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [p.image for p in batch])
                for p, r in zip(batch, results):
                    if not p.future.done():
                        p.future.set_result(r)
            except Exception as e:  # a failed batch fails its requests, not the server
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)


class Service:
    """The loaded model and what every route needs from it."""

    def __init__(self, model: str | Path, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS, engine: str = "torch",
                 device: str = "cpu"):
        from ..evaluation.model_card import model_card

        self.predictor = load_on(model, engine, device)
        self.lock = threading.Lock()  # one model call at a time (Grad-CAM hooks the same network)
        exported = getattr(self.predictor, "export", None) or {}  # an ONNX file: the checkpoint it came from
        source = (exported.get("source_checkpoint") or {}).get("sha256") or sha256(self.predictor.checkpoint)
        self.model_id = f"{self.predictor.meta.get('model_name')}-{source[:12]}"
        self.card = model_card(self.predictor)
        self.lungs = lung_model_on(self.predictor)
        self.batcher = MicroBatcher(self.run_batch, max(1, max_batch), max(0.0, max_wait_ms) / 1000)

    @property
    def explain_available(self) -> bool:
        return self.predictor.model is not None

    def decode(self, name: str, data: bytes, folder: Path, index: int) -> np.ndarray:
        if not data:
            raise RequestError(400, f"{name}: empty file (0 bytes)")
        suffix = sniff(data[:132])  # by content, never by the file name
        path = folder / f"upload-{index}{suffix or ''}"  # no known signature: the reader still tries DICOM without preamble
        path.write_bytes(data)
        try:
            image = decode_resized(str(path), self.predictor.preprocessing.stored_side)
        except XrayReadError as e:
            if suffix is None:
                raise RequestError(415, f"{name}: not a PNG, JPEG, TIFF, BMP, WebP or DICOM image (judged by its content)") from e
            raise RequestError(422, f"{name}: {e.reason}") from e
        quality = image_quality(image)
        if quality != OK:
            raise RequestError(422, f"{name}: image quality: {quality}; no prediction")
        return image

    def run_batch(self, images: list[np.ndarray]) -> list[dict]:
        p = self.predictor
        with self.lock:
            taken, own = p.lung_view(images)  # the model's own lung input, where its contract has one
            logits, features = p.forward(taken)
            found, fields = fields_found(own) if own is not None else lungs_found(self.lungs, images)
        cols = p.outputs(logits, features if len(features) else None)
        per_class = {k[2:]: v for k, v in cols.items() if k.startswith("p_") and k != "p_infected"}
        if p.scheme.task == "binary":
            per_class["infected"] = cols["p_infected"]
        out = []
        for i in range(len(images)):
            r = {"p_infected": float(cols["p_infected"][i]), "probabilities": {k: float(v[i]) for k, v in per_class.items()},
                 "predicted": str(cols["predicted"][i]), "lungs_found": bool(found[i]), "lung_fields": fields[i]}
            if "predicted_class" in cols:
                r["predicted_class"] = str(cols["predicted_class"][i])
            if "ood_score" in cols:
                r["out_of_distribution"] = {"score": float(cols["ood_score"][i]), "flag": bool(cols["out_of_distribution"][i]),
                                            "threshold": p.ood.threshold}
            out.append(r)
        return out

    def explain(self, images: list[np.ndarray]) -> list[str]:
        """Grad-CAM overlays as base64 PNGs."""
        from PIL import Image

        from ..evaluation.explain import gradcam, overlay

        with self.lock:
            cams, _, shown = gradcam(self.predictor, self.predictor.lung_view(images)[0])  # the images the model takes
        encoded = []
        for cam, gray in zip(cams, shown):
            buf = io.BytesIO()
            Image.fromarray(overlay(gray, cam)).save(buf, format="PNG")
            encoded.append(base64.b64encode(buf.getvalue()).decode())
        return encoded

    def decision_fields(self) -> dict:
        p = self.predictor
        return {"threshold": p.threshold, "threshold_rule": p.threshold_rule, "model_id": self.model_id,
                "model_version": f"chestxray {__version__}, {p.meta.get('model_name')} {p.meta.get('stage')}",
                "research_use_only": RESEARCH_NOTE + " Do not use for diagnosis or patient care."}

    def describe(self) -> dict:
        p = self.predictor
        return {"model_id": self.model_id, "chestxray_version": __version__, "model_name": p.meta.get("model_name"),
                "stage": p.meta.get("stage"), "runtime": "onnxruntime" if p.model is None else "pytorch",
                "scheme": p.scheme.to_dict(), "preprocessing": p.preprocessing.to_dict(), "temperature": p.temperature,
                "threshold": p.threshold, "threshold_rule": p.threshold_rule, "thresholds": p.thresholds,
                "out_of_distribution": None if p.ood is None else {"threshold": p.ood.threshold, "quantile": p.ood.quantile},
                "explain_available": self.explain_available, "research_use_only": RESEARCH_NOTE,
                "model_card": self.card}


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read whole."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def _reject(self, send) -> None:
        import json

        body = json.dumps({"error": f"upload larger than the {self.limit / 2 ** 20:g} MB limit (--max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)


def create_app(model: str | Path, max_upload_mb: float = MAX_UPLOAD_MB, max_files: int = MAX_FILES,
               api_key: str | None = None, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
               engine: str = "torch", device: str = "cpu"):
    """The FastAPI application serving `model` (a run directory, best.ckpt or exported .onnx; `engine` as in
    `engines.load_on`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    service = Service(model, max_batch, max_wait_ms, engine, device)
    registry = CollectorRegistry()
    requests = Counter("chestxray_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
    latency = Histogram("chestxray_request_seconds", "Request latency (seconds) by route", ["route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("chestxray_batch_size", "Images per forward pass", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64))
    images_total = Counter("chestxray_images", "Images predicted", registry=registry)
    service.batcher.on_batch = batch_sizes.observe

    app = FastAPI(title="chestxray", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  description=RESEARCH_NOTE)
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        route = request.url.path if request.url.path in ("/", "/predict", "/health", "/ready", "/model", "/metrics") else "other"
        if api_key and route in ("/predict", "/model", "/metrics"):
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                response = error(401, "missing or wrong API key (header X-API-Key or Authorization: Bearer)")
                requests.labels(route, "401").inc()
                return response
        response = await call_next(request)
        requests.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error(422, f"invalid request: {problems}")

    @app.exception_handler(404)
    async def not_found(request, exc):
        return error(404, f"no route {request.url.path}")

    @app.exception_handler(405)
    async def wrong_method(request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    @app.get("/health")
    async def health():
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        return {"ready": True, "model_id": service.model_id}

    @app.get("/model")
    async def model_info():
        return service.describe()

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.post("/predict")
    async def predict(request: Request, explain: bool = False):
        if explain and not service.explain_available:
            raise RequestError(400, "explain=1 needs the PyTorch model; this server runs an exported ONNX file")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(400, "send the images as multipart/form-data (field name 'files')")
        try:
            form = await request.form(max_files=max_files, max_fields=max_files + 8)
        except Exception as e:  # starlette's MultiPartException: too many files, malformed body
            message = str(getattr(e, "detail", None) or e)
            if "Too many files" in message:
                raise RequestError(413, f"too many files in one request (limit {max_files}, --max-files)") from e
            raise RequestError(400, f"malformed multipart body: {message}") from e
        uploads = [v for _, v in form.multi_items() if hasattr(v, "read") and hasattr(v, "filename")]
        if not uploads:
            raise RequestError(400, "no file: send one or more images in the multipart field 'files'")
        names = [u.filename or f"file {i + 1}" for i, u in enumerate(uploads)]
        with tempfile.TemporaryDirectory(prefix="chestxray-serve-") as tmp:
            datas = [await u.read() for u in uploads]
            for u in uploads:
                await u.close()
            images = await asyncio.get_running_loop().run_in_executor(
                None, lambda: [service.decode(n, d, Path(tmp), i) for i, (n, d) in enumerate(zip(names, datas))])
        results = await service.batcher.submit(images)
        images_total.inc(len(images))
        if explain:
            overlays = await asyncio.get_running_loop().run_in_executor(None, service.explain, images)
            for r, o in zip(results, overlays):
                r["gradcam_png_base64"] = o
        common = service.decision_fields()
        return {"predictions": [{"file": n, **r, **common} for n, r in zip(names, results)], **common}

    return BodyLimit(app, int(max_upload_mb * 2 ** 20)) if max_upload_mb else app


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, **kwargs) -> None:
    import uvicorn

    app = create_app(model, **kwargs)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
