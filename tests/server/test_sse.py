"""Progress streaming (Server-Sent Events) over real HTTP: event order, one ``progress`` per DiT step, ``result``
equal to the non-streaming answer for the same seed, ``error`` with the non-streaming status and body, cancellation
when the client disconnects, and the stream metrics."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.server.conftest import metric_value, png_bytes, start_server

SSE = {"Accept": "text/event-stream"}


def read_events(response: httpx.Response, stop_after: int | None = None) -> tuple[list[dict], list[str]]:
    """Parse the WHATWG event-stream format: ``[{"id", "event", "data"}]`` and the comment lines seen."""
    events, comments, current, data = [], [], {}, []
    for line in response.iter_lines():
        if line.startswith(":"):
            comments.append(line[1:].strip())
        elif line == "":
            if current or data:
                events.append({**current, "data": json.loads("\n".join(data))})
                current, data = {}, []
                if stop_after is not None and len(events) >= stop_after:
                    break
        else:
            field, _, value = line.partition(": ")
            if field == "data":
                data.append(value)
            else:
                current[field] = value
    return events, comments


def stream(client: httpx.Client, path: str, **kw) -> tuple[httpx.Response, list[dict], list[str]]:
    with client.stream("POST", path, headers=SSE, **kw) as r:
        events, comments = read_events(r)
    return r, events, comments


@pytest.fixture(scope="module")
def sse_server(model_dir, tmp_path_factory):
    # max_rows 4: a 4-image guided request is admitted in two halves, which still gives one progress per step.
    srv = start_server(model_dir, tmp_path_factory, "sse", max_rows=4, batch_wait_s=0, max_steps=1000,
                       max_images=8, request_timeout_s=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sc(sse_server):
    with sse_server.client() as c:
        yield c


def test_generate_stream_order_one_progress_per_step_and_same_bytes(sc):
    body = {"class_id": 3, "steps": 6, "cfg": 4.0, "seed": 11}
    r, events, comments = stream(sc, "/generate", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert "stream open" in comments
    names = [e["event"] for e in events]
    assert names == ["queued", "started"] + ["progress"] * 6 + ["result"], names
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    queued = events[0]["data"]
    assert queued["position"] >= 1 and queued["estimated_start_s"] >= 0
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6] and {p["total"] for p in progress} == {6}
    assert all(b["elapsed_s"] >= a["elapsed_s"] for a, b in zip(progress, progress[1:]))
    assert progress[-1]["eta_s"] == 0
    result = events[-1]["data"]
    assert result["seed"] == 11 and result["steps"] == 6 and len(result["images"]) == 1
    plain = sc.post("/generate", json=body, headers={"Accept": "image/png"})
    assert plain.status_code == 200
    assert base64.b64decode(result["images"][0]["png_base64"]) == plain.content


def test_staggered_admission_still_one_progress_per_step(sc):
    # 4 guided images cost 8 rows > max_rows 4: rows join over several steps; progress follows the slowest row.
    r, events, _ = stream(sc, "/generate", json={"class_id": [1, 2, 3, 4], "steps": 5, "cfg": 4.0, "seed": 2})
    progress = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert progress == [1, 2, 3, 4, 5] and events[-1]["event"] == "result"
    assert len(events[-1]["data"]["images"]) == 4


def test_interpolate_and_edit_stream(sc):
    r, events, _ = stream(sc, "/interpolate", json={"class_id": 5, "seed_a": 1, "seed_b": 2, "num_points": 3,
                                                    "steps": 4, "cfg": 1.0})
    assert [e["event"] for e in events] == ["queued", "started"] + ["progress"] * 4 + ["result"]
    assert [im["t"] for im in events[-1]["data"]["images"]] == [0.0, 0.5, 1.0]
    # An edit at strength 0.5 runs only the second half of its 8-step grid: total is the steps it runs.
    files = {"image": ("a.png", png_bytes(color=(200, 40, 40)), "image/png")}
    data = {"class_id": "7", "steps": "8", "strength": "0.5", "box": "[0, 0, 32, 32]", "seed": "5"}
    r, events, _ = stream(sc, "/edit", files=files, data=data)
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert events[-1]["event"] == "result", events[-1]
    total = progress[0]["total"]
    assert 1 <= total < 8 and [p["step"] for p in progress] == list(range(1, total + 1))


def test_bad_input_is_an_error_event_with_the_plain_status_and_body(sc):
    r, events, _ = stream(sc, "/generate", json={"class_id": 1000, "steps": 2})
    assert r.status_code == 200 and [e["event"] for e in events] == ["error"]
    err = events[0]["data"]
    plain = sc.post("/generate", json={"class_id": 1000, "steps": 2})
    assert err["status"] == plain.status_code == 422
    expected = plain.json()
    assert {k: v for k, v in err.items() if k not in ("status", "request_id")} == \
           {k: v for k, v in expected.items() if k != "request_id"}
    assert err["request_id"] == r.headers["x-request-id"]


def test_disconnect_cancels_the_job_and_stream_metrics(sse_server, sc):
    def metrics() -> str:
        return sc.get("/metrics").text

    before = metric_value(metrics(), "svg_cancellations_total", 'reason="client_disconnect"')
    images_before = metric_value(metrics(), "svg_images_total", 'endpoint="/generate"')
    sent_before = metric_value(metrics(), "svg_sse_events_total", 'event="progress"')
    # 8 guided images x 1000 steps at max_rows 4: far longer than the test; we leave after two progress events.
    with httpx.Client(base_url=sse_server.url, timeout=60) as c:
        with c.stream("POST", "/generate", headers=SSE,
                      json={"class_id": 2, "num_images": 8, "steps": 1000, "cfg": 4.0}) as r:
            events, _ = read_events(r, stop_after=4)
            assert [e["event"] for e in events] == ["queued", "started", "progress", "progress"]
            assert metric_value(metrics(), "svg_sse_streams_open") == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if metric_value(metrics(), "svg_cancellations_total", 'reason="client_disconnect"') == before + 1:
            break
        time.sleep(0.05)
    text = metrics()
    assert metric_value(text, "svg_cancellations_total", 'reason="client_disconnect"') == before + 1
    assert metric_value(text, "svg_inflight_requests") == 0
    assert metric_value(text, "svg_images_total", 'endpoint="/generate"') == images_before
    nfe = metric_value(text, "svg_nfe_total")
    time.sleep(0.3)
    assert metric_value(metrics(), "svg_nfe_total") == nfe  # no more rows run for it
    assert metric_value(metrics(), "svg_sse_streams_open") == 0
    assert metric_value(metrics(), "svg_sse_events_total", 'event="progress"') >= sent_before + 2


def test_without_event_stream_accept_nothing_changes(sc):
    r = sc.post("/generate", json={"class_id": 1, "steps": 1, "seed": 1}, headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"


def test_a_queued_stream_gets_heartbeats_and_a_start_estimate(sse_server):
    # A long request holds every row (FIFO, no backfill); a second one waits behind it with no events to send.
    # 8 guided Heun images x 1000 steps at max_rows 4: 8,000 batched evaluations, far longer than HEARTBEAT_S.
    with httpx.Client(base_url=sse_server.url, timeout=60) as c:
        with c.stream("POST", "/generate", headers=SSE, json={"class_id": 2, "num_images": 8, "steps": 1000,
                                                               "cfg": 4.0, "sampler": "heun"}) as first:
            head = first.iter_lines()  # kept open: closing the generator would close the stream (a disconnect)
            while next(head) != "event: started":  # read up to its start
                pass
            with c.stream("POST", "/generate", headers=SSE, json={"class_id": 1, "steps": 3}) as second:
                lines = []
                for line in second.iter_lines():  # HEARTBEAT_S = 5 s without events
                    lines.append(line)
                    if line == ": heartbeat":
                        break
    queued = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    assert lines[-1] == ": heartbeat", [x for x in lines if x.startswith(("event", ":"))]
    assert "event: queued" in lines and "event: started" not in lines
    assert queued["position"] == 1 and queued["estimated_start_s"] > 0
