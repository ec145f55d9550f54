"""The HTTP service: every route, every bad input, the API key, micro-batching, and nothing left on disk."""

import asyncio
import base64
import io
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from chestxray.apps.serve import create_app
from chestxray.cli import app as cli_app
from chestxray.data.io import sniff
from tests.helpers import png_header_only, write_dicom


@pytest.fixture(scope="module")
def images(tiny_run):
    paths = pd.read_csv(tiny_run / "split.csv")["path"].tolist()
    return [Path(p) for p in paths]


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run, max_upload_mb=1, max_files=4)) as c:
        yield c


def post(client, files, **kw):
    return client.post("/predict", files=[("files", f) for f in files], **kw)


def test_predict_matches_the_cli(client, tiny_run, images, tmp_path):
    """The JSON of /predict holds the same P(infected), label and threshold as `chestxray predict`."""
    chosen = images[:3]
    res = post(client, [(p.name, p.read_bytes(), "image/png") for p in chosen])
    assert res.status_code == 200, res.text
    body = res.json()
    out = CliRunner().invoke(cli_app, ["predict", str(tiny_run), *map(str, chosen), "--out", str(tmp_path / "p.csv")])
    assert out.exit_code == 0, out.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert [p["file"] for p in body["predictions"]] == [p.name for p in chosen]
    for p, row in zip(body["predictions"], table.itertuples()):
        assert p["p_infected"] == pytest.approx(row.p_infected, abs=1e-6)
        assert p["predicted"] == row.predicted and p["threshold"] == row.threshold
        assert p["probabilities"]["infected"] == p["p_infected"]
        assert p["out_of_distribution"]["flag"] == row.out_of_distribution
        assert "not a diagnostic device" in p["research_use_only"]
        assert p["model_id"].startswith("efficientnet_lite0-") and p["threshold_rule"]


def test_every_format_by_content_not_name(client, images, tmp_path):
    """PNG, JPEG, TIFF and DICOM uploads, named wrongly on purpose: the content decides."""
    arr = np.asarray(Image.open(images[0]).convert("L"))
    blobs = {}
    for fmt in ("JPEG", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        blobs[fmt] = buf.getvalue()
    write_dicom(tmp_path / "x.dcm", arr.astype(np.uint16) * 16)
    blobs["DICOM"] = (tmp_path / "x.dcm").read_bytes()
    blobs["PNG"] = images[0].read_bytes()
    res = post(client, [(f"image-{k}.txt", v, "text/plain") for k, v in blobs.items()])
    assert res.status_code == 200, res.text
    p = {q["file"]: q["p_infected"] for q in res.json()["predictions"]}
    assert len(p) == 4 and all(0 <= v <= 1 for v in p.values())
    assert abs(p["image-JPEG.txt"] - p["image-PNG.txt"]) < 0.2  # same picture, lossy copy
    assert sniff(blobs["DICOM"]) == ".dcm" and sniff(b"GIF89a") is None
    # a DICOM written without preamble and File Meta has no signature; the reader still takes it
    import pydicom

    ds = pydicom.dcmread(tmp_path / "x.dcm")
    ds.preamble, ds.file_meta = None, pydicom.dataset.FileMetaDataset()
    ds.save_as(tmp_path / "bare", enforce_file_format=False, implicit_vr=False, little_endian=True)
    res = post(client, [("bare", (tmp_path / "bare").read_bytes(), "application/octet-stream")])
    assert res.status_code == 200, res.text
    assert res.json()["predictions"][0]["p_infected"] == pytest.approx(p["image-DICOM.txt"], abs=1e-6)


@pytest.mark.parametrize("case", ["no file", "empty", "not an image", "corrupt png", "truncated dicom", "bomb",
                                  "too large", "too many", "not multipart", "bad explain"])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(client, images, tmp_path, case):
    good = images[0].read_bytes()
    write_dicom(tmp_path / "x.dcm", np.full((64, 64), 900, np.uint16))
    dicom = (tmp_path / "x.dcm").read_bytes()
    requests = {
        "no file": (lambda: client.post("/predict", data={"note": "x"}, files=[("other", ("", b"", "text/plain"))]), 400, "no file"),
        "empty": (lambda: post(client, [("e.png", b"", "image/png")]), 400, "e.png: empty file"),
        "not an image": (lambda: post(client, [("notes.png", b"hello, this is text" * 20, "image/png")]), 415, "notes.png: not a PNG"),
        "corrupt png": (lambda: post(client, [("c.png", good[: len(good) // 2], "image/png")]), 422, "c.png: cannot decode"),
        "truncated dicom": (lambda: post(client, [("t.dcm", dicom[: len(dicom) - 3000], "application/dicom")]), 422, "t.dcm:"),
        "bomb": (lambda: post(client, [("b.png", png_header_only(100_000, 100_000), "image/png")]), 422, "larger than"),
        "too large": (lambda: post(client, [("big.png", good + b"\0" * (1_100_000), "image/png")]), 413, "larger than the 1 MB"),
        "too many": (lambda: post(client, [(f"{i}.png", good, "image/png") for i in range(5)]), 413, "too many files"),
        "not multipart": (lambda: client.post("/predict", json={"image": "x"}), 400, "multipart/form-data"),
        "bad explain": (lambda: client.post("/predict?explain=maybe", files=[("files", ("a.png", good, "image/png"))]), 422, "explain"),
    }
    send, status, words = requests[case]
    res = send()
    assert res.status_code == status, res.text
    assert words in res.json().get("error", str(res.json()))
    assert post(client, [("ok.png", good, "image/png")]).status_code == 200  # still serving


def test_explain_returns_a_gradcam_png(client, images):
    res = client.post("/predict?explain=1", files=[("files", (images[0].name, images[0].read_bytes(), "image/png"))])
    assert res.status_code == 200, res.text
    png = base64.b64decode(res.json()["predictions"][0]["gradcam_png_base64"])
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.mode == "RGB" and im.size[0] >= 32


def test_health_ready_model_metrics_and_page(client):
    assert client.get("/health").json() == {"status": "alive"}
    assert client.get("/ready").json()["ready"] is True
    m = client.get("/model").json()
    assert m["scheme"]["task"] == "binary" and m["runtime"] == "pytorch" and m["explain_available"]
    assert "## Intended use" in m["model_card"] and "## Caveats and recommendations" in m["model_card"]
    text = client.get("/metrics").text
    assert 'chestxray_requests_total{route="/predict",status="200"}' in text
    assert "chestxray_request_seconds_bucket" in text and "chestxray_batch_size_bucket" in text
    page = client.get("/")
    assert page.status_code == 200 and "Research use only" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    assert client.get("/nowhere").json()["error"].startswith("no route")


def test_api_key(tiny_run, images, monkeypatch):
    with TestClient(create_app(tiny_run, api_key="s3cret")) as c:
        good = [("files", ("a.png", images[0].read_bytes(), "image/png"))]
        assert c.post("/predict", files=good).status_code == 401
        assert c.post("/predict", files=good, headers={"X-API-Key": "wrong"}).status_code == 401
        assert "API key" in c.get("/model").json()["error"]
        assert c.post("/predict", files=good, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # liveness stays open


def test_concurrent_requests_are_batched(tiny_run, images):
    """Eight requests at once with a 200 ms window are answered from fewer forward passes, each result its own."""
    app = create_app(tiny_run, max_batch=8, max_wait_ms=200)
    service = app.app.state.service
    sizes = []
    service.batcher.on_batch = sizes.append
    blobs = [p.read_bytes() for p in images[:8]]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*[c.post("/predict", files=[("files", (f"{i}.png", b, "image/png"))])
                                          for i, b in enumerate(blobs)])

    results = asyncio.run(run())
    assert all(r.status_code == 200 for r in results)
    assert sum(sizes) == 8 and max(sizes) > 1
    alone = create_app(tiny_run, max_batch=1)
    with TestClient(alone) as c:
        for i, (b, r) in enumerate(zip(blobs, results)):
            single = c.post("/predict", files=[("files", (f"{i}.png", b, "image/png"))]).json()["predictions"][0]
            assert single["p_infected"] == pytest.approx(r.json()["predictions"][0]["p_infected"], abs=1e-5)


def test_nothing_is_left_on_disk(client, images):
    before = set(Path(tempfile.gettempdir()).glob("chestxray-serve-*"))
    post(client, [(images[0].name, images[0].read_bytes(), "image/png")])
    post(client, [("c.png", images[0].read_bytes()[:100], "image/png")])
    assert set(Path(tempfile.gettempdir()).glob("chestxray-serve-*")) == before
