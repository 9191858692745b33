"""Locust scenarios for the SVG server: weighted generate / encode / edit / interpolate traffic with a data shape.

Run it through the headless runner (``python -m loadtest.run``) or directly, with Locust's own user count, spawn
rate and run time (this file defines no load shape, so ``-u``, ``-r`` and ``-t`` apply as usual)::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 -t 600s

or with one of our data shapes, by adding the shape file (only then is a shape applied)::

    locust -f loadtest/locustfile.py,loadtest/shapefile.py --host http://127.0.0.1:8000 --headless \
        --shape-name burst --shape-users 16 --shape-duration 5m --csv out/locust --csv-full-history

Scenario weights (tasks of :class:`SVGUser`): generate 6 (mixed steps, guidance and image counts), encode 2 (a PNG
made in memory with PIL), edit 1 (image + rectangular mask), interpolate 1, plus light ``/health`` and ``/models``
reads. Every non-2xx answer is a failure, overload answers (429/503) included: that is what a client sees.

The load shape (``shapefile.py``, :class:`DataShape`) reads ``shapes/<name>.json`` (or a path) and scales it to
``--shape-duration`` and ``--shape-users``; it ends the run. A shape in this file would make Locust ignore ``-u``,
``-r`` and ``-t`` (with only a warning), which is why it lives apart. At shutdown a ``quitting`` hook sets the
process exit code from the SLO thresholds ``--slo-max-fail-ratio`` / ``--slo-max-p99-ms`` (0 pass, 1 breached),
instead of Locust's default of exiting 1 on any single failure (case T25).
"""

from __future__ import annotations

import io
import logging
import random

from locust import HttpUser, between, events, task
from PIL import Image, ImageDraw

# Locust puts this file's folder on sys.path, so the sibling modules import by their plain names.
from slo import EXIT_PASS, EXIT_SLO_BREACHED, RunStats, Thresholds, breaches

logger = logging.getLogger("svg.loadtest")

# Mixes drawn per request. Steps are fractions of --max-steps (so one file serves a CPU smoke run and a GPU run).
STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.04)
IMAGE_COUNTS = (1, 1, 1, 2, 4)
GUIDANCE_SCALES = (1.0, 1.0, 4.0)  # 1.0 = no guidance (no unconditional twin rows); 4.0 = the paper's CFG setting.
GUIDANCE_MODES = ("constant", "cfg_star")
SAMPLERS = ("euler", "euler", "heun")
TIMESTEP_SHIFTS = (0.15, 0.15, 0.3)  # 0.15 is the paper's sampling default
NUM_CLASSES = 1000  # ImageNet; replaced per user by GET /models' num_classes when the server reports it
IMAGE_SIZE = 256  # upload side when --image-size is 0 and GET /models reports no image_size


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    """Our options, available as ``environment.parsed_options.<name>`` (and in the web UI)."""
    # Read only by shapefile.py's DataShape (when that file is loaded too); without it -u/-r/-t apply.
    parser.add_argument("--shape-name", default="steady",
                        help="with shapefile.py: built-in shape (steady|burst|ramp) or a .json path")
    parser.add_argument("--shape-users", type=int, default=4, help="with shapefile.py: peak concurrent users")
    parser.add_argument("--shape-duration", default="20s", help="with shapefile.py: run length, e.g. 20s, 5m")
    parser.add_argument("--max-steps", type=int, default=25, help="largest sampling step count a request asks for")
    parser.add_argument("--image-size", type=int, default=0,
                        help="side in pixels of uploaded test images (0: the model's image_size from GET /models)")
    parser.add_argument("--api-key", default=None, env_var="SVG_LOADTEST_API_KEY",
                        help="bearer token for a server started with --api-key (env SVG_LOADTEST_API_KEY)")
    parser.add_argument("--slo-max-fail-ratio", type=float, default=0.01, help="allowed failure ratio, 0..1")
    parser.add_argument("--slo-max-p99-ms", type=float, default=30_000.0, help="allowed p99 latency, ms")
    parser.add_argument("--slo-max-p95-ms", type=float, default=None, help="allowed p95 latency, ms (optional)")


def _png(size: int, seed: int, mask: bool = False) -> bytes:
    """A PNG of ``size`` x ``size`` pixels: random colour blocks (RGB), or a white rectangle on black (L, a mask)."""
    rng = random.Random(seed)
    if mask:
        image = Image.new("L", (size, size), 0)
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        ImageDraw.Draw(image).rectangle((x0, y0, x0 + size // 3, y0 + size // 3), fill=255)
    else:
        image = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(image)
        block = max(size // 8, 1)
        for y in range(0, size, block):
            for x in range(0, size, block):
                colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
                draw.rectangle((x, y, x + block - 1, y + block - 1), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class SVGUser(HttpUser):
    """One client: think time 0.1-0.5 s between requests, weighted scenarios as tasks."""

    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.max_steps = max(1, options.max_steps if options else 25)
        if options is not None and options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        self.num_classes, size = NUM_CLASSES, IMAGE_SIZE
        with self.client.get("/models", name="/models (start)", catch_response=True) as response:
            if response.status_code == 200:
                model = response.json()
                self.num_classes = int(model.get("num_classes", NUM_CLASSES))
                size = int(model.get("image_size", IMAGE_SIZE))
                response.success()
        if options is not None and options.image_size > 0:
            size = options.image_size
        self.images = [_png(size, seed) for seed in range(4)]
        self.masks = [_png(size, seed, mask=True) for seed in range(4)]

    def _steps(self) -> int:
        return max(1, round(self.max_steps * random.choice(STEP_FRACTIONS)))

    @task(6)
    def generate(self) -> None:
        body = {
            "class_id": random.randrange(self.num_classes),
            "num_images": random.choice(IMAGE_COUNTS),
            "steps": self._steps(),
            "cfg": random.choice(GUIDANCE_SCALES),
            "guidance_mode": random.choice(GUIDANCE_MODES),
            "timestep_shift": random.choice(TIMESTEP_SHIFTS),
            "sampler": random.choice(SAMPLERS),
            "seed": random.randrange(2**31),
        }
        self.client.post("/generate", json=body, name="/generate")

    @task(2)
    def encode(self) -> None:
        files = {"image": ("test.png", random.choice(self.images), "image/png")}
        self.client.post("/encode", files=files, name="/encode")

    @task(1)
    def edit(self) -> None:
        files = {
            "image": ("image.png", random.choice(self.images), "image/png"),
            "mask": ("mask.png", random.choice(self.masks), "image/png"),
        }
        data = {
            "class_id": str(random.randrange(self.num_classes)),
            "strength": str(random.choice((0.3, 0.6, 0.9))),
            "steps": str(self._steps()),
            "cfg": str(random.choice(GUIDANCE_SCALES)),
            "region": random.choice(("inside", "outside")),
            "seed": str(random.randrange(2**31)),
        }
        self.client.post("/edit", files=files, data=data, name="/edit")

    @task(1)
    def interpolate(self) -> None:
        body = {
            "class_id": random.randrange(self.num_classes),
            "seed_a": random.randrange(2**31),
            "seed_b": random.randrange(2**31),
            "steps": self._steps(),
            "mode": random.choice(("slerp", "lerp")),
        }
        if random.random() < 0.5:
            body["num_points"] = random.choice((3, 5))
        else:
            body["t"] = [0.0, 0.25, 0.5, 1.0]
        self.client.post("/interpolate", json=body, name="/interpolate")

    @task(1)
    def read_only(self) -> None:
        self.client.get(random.choice(("/health", "/models")))


@events.quitting.add_listener
def _slo_exit_code(environment, **_kwargs) -> None:
    """Set the exit code from the SLO thresholds (0 pass, 1 breached) rather than 'any failure is fatal'."""
    options = environment.parsed_options
    if options is None:
        return
    total = environment.stats.total
    stats = RunStats(
        requests=total.num_requests,
        failures=total.num_failures,
        requests_per_s=total.total_rps,
        p50_ms=total.get_response_time_percentile(0.50) or 0.0,
        p95_ms=total.get_response_time_percentile(0.95) or 0.0,
        p99_ms=total.get_response_time_percentile(0.99) or 0.0,
    )
    thresholds = Thresholds(max_fail_ratio=options.slo_max_fail_ratio, max_p99_ms=options.slo_max_p99_ms,
                            max_p95_ms=options.slo_max_p95_ms)
    found = breaches(stats, thresholds)
    environment.process_exit_code = EXIT_SLO_BREACHED if found else EXIT_PASS
    if found:
        logger.warning("SLO breached: %s", "; ".join(found))
    else:
        logger.info("SLO met")
