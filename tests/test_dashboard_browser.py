"""The dashboard in a real headless Chromium, served by `emotion dashboard` as a real subprocess
against the test Redis and a temporary SQLite store. Screenshots go to test-artifacts/dashboard/."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shared.model_runtime import read_metadata
import redis
import requests

from shared.schemas import encode
from shared.streams import Keys, StreamTable
from tests.proc_utils import free_port, wait_for
from tests.test_dashboard_support import emotion_event, face_png, frame_message, served_model_dir  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PREFIX = "dashtest"
PAGES = ("/live", "/history", "/sessions", "/analyze", "/training", "/health")


@pytest.fixture(scope="module")
def redis_url_module() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def dashboard_database_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('dashboard-db') / 'events.sqlite'}"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, served_model_dir, redis_url_module, dashboard_database_url):  # noqa: F811
    """Base URL of a dashboard subprocess (waitress) on a free port."""
    client = redis.Redis.from_url(redis_url_module)
    client.flushdb()
    work = tmp_path_factory.mktemp("dashboard")
    database_url = dashboard_database_url
    try:
        from shared.store import migrate

        migrate(database_url)
    except ImportError:
        pass  # the history store is optional for these tests: its pages then show an error banner
    port = free_port()
    env = {**os.environ, "EMOTION_REDIS_URL": redis_url_module, "EMOTION_PREFIX": PREFIX,
           "EMOTION_DATABASE_URL": database_url, "EMOTION_DEFAULT_MODEL_DIR": str(served_model_dir),
           "EMOTION_REGISTRY_DIR": str(work / "registry"), "EMOTION_LOG_LEVEL": "INFO"}
    log_path = work / "dashboard.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "emotion", "dashboard", "--port", str(port)], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {proc.returncode}")
        try:
            return requests.get(base + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, 60, interval=0.3, what="the dashboard's /healthz")
    except (TimeoutError, RuntimeError):
        proc.kill()
        pytest.fail(f"dashboard did not start:\n{log_path.read_text()[-3000:]}")
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    client.flushdb()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Chromium not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _severe(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _wait(driver, condition, timeout: float = 20.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition, message=f"timed out waiting for {what}")


def _open(driver, url: str, heading: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: any(heading in h.text for h in d.find_elements(By.TAG_NAME, "h1")), what=f"h1 {heading!r}")


def _replace_text(element, text: str) -> None:
    """Select-all + delete, then type: clear() does not reach React's state in Dash inputs."""
    from selenium.webdriver.common.keys import Keys as Key

    element.send_keys(Key.CONTROL, "a")
    element.send_keys(Key.DELETE)
    element.send_keys(text)


def _shot(driver, name: str) -> Path:
    """Screenshot of the whole page (the window is stretched to the page height for it)."""
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(2600, max(1000, int(height) + 40)))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


class Feeder:
    """Publishes real encoded frames and events (as the capture and classifier would) in a thread."""

    def __init__(self, url: str, cameras: tuple[str, ...], fps: float = 4.0) -> None:
        self.client = redis.Redis.from_url(url)
        self.keys = Keys(PREFIX)
        self.cameras, self.fps = cameras, fps
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.frames = 0

    def _beat(self, pipe, camera: str, now: int) -> None:
        """The heartbeat a running capture writes (services/capture/capture.py): the camera is live."""
        pipe.set(self.keys.heartbeat("capture", f"capture-{camera}-test"),
                 '{"service": "capture", "consumer": "capture-%s-test", "camera_id": "%s", "pid": 1, "ts_ms": %d, '
                 '"started_ms": %d, "entries": 0, "dead": 0, "busy_s": 0.0}' % (camera, camera, now, now), ex=10)

    def _run(self) -> None:
        labels = ("happy", "neutral", "surprise", "sad")
        for camera in self.cameras:
            self.client.hset(self.keys.cameras, camera, '{"source": "test"}')
        frame_id = 0
        while not self.stop.is_set():
            now = int(time.time() * 1000)
            pipe = self.client.pipeline(transaction=False)
            for index, camera in enumerate(self.cameras):
                pipe.xadd(self.keys.frames, encode(frame_message(camera, frame_id, captured_ms=now)),
                          **StreamTable(self.keys).frames.xadd_options())
                event = emotion_event(camera, frame_id, label=labels[(frame_id // 6 + index) % len(labels)],
                                      track_id=1 + index, captured_ms=now)
                pipe.xadd(self.keys.events, encode(event))
                pipe.hincrby(self.keys.stats("capture"), "published", 1)
                pipe.hincrby(self.keys.stats("classifier"), "entries_out", 1)
                self._beat(pipe, camera, now)
            pipe.set(self.keys.heartbeat("classifier", "classifier-test-1"),
                     '{"service": "classifier", "consumer": "classifier-test-1", "entries": %d, "dead": 0, '
                     '"busy_s": 0.5, "ts_ms": %d, "started_ms": %d}' % (frame_id, now, now - 60_000), ex=10)
            pipe.execute()
            self.frames = frame_id = frame_id + 1
            self.stop.wait(1 / self.fps)

    def __enter__(self) -> "Feeder":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        for camera in self.cameras:  # as capture does when it stops
            self.client.delete(self.keys.heartbeat("capture", f"capture-{camera}-test"))


def test_every_page_loads_without_console_errors(dashboard, browser):
    """Each page renders its heading and the browser logs no SEVERE error (JS exceptions, failed loads)."""
    headings = {"/live": "Live", "/history": "History", "/sessions": "Session report", "/analyze": "Analyze",
                "/training": "Training", "/health": "Pipeline health"}
    browser.get(dashboard + "/live")
    _severe(browser)  # drop anything logged before the first page
    for path in PAGES:
        _open(browser, dashboard + path, headings[path])
        time.sleep(2.5)  # let the first interval callbacks run
        errors = _severe(browser)
        _shot(browser, "page" + path.replace("/", "-"))
        assert not errors, f"{path}: SEVERE console messages: {errors}"


def test_live_page_shows_new_events(dashboard, browser, redis_url_module):
    """While frames and events are XADDed into the real streams, the Live page shows them within seconds:
    a camera card with a drawn face box, and the events table gaining rows for that camera."""
    from selenium.webdriver.common.by import By

    _open(browser, dashboard + "/live", "Live")
    with Feeder(redis_url_module, ("cam-north", "cam-south")) as feeder:
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-camera='cam-north'] .face-box"),
              what="a face box on cam-north")
        _wait(browser, lambda d: "cam-south" in d.find_element(By.ID, "live-events").text, what="cam-south events")
        first = browser.find_element(By.ID, "live-events").text
        _wait(browser, lambda d: d.find_element(By.ID, "live-events").text != first, timeout=10,
              what="newer events replacing the table")
        time.sleep(3)
        _shot(browser, "live-with-events")
        tag = browser.find_element(By.CSS_SELECTOR, "[data-camera='cam-north'] .face-tag").text
        assert "#1" in tag and "%" in tag
        assert feeder.frames > 0
        timeline_points = browser.execute_script(
            "const g = document.querySelector('#live-timeline .js-plotly-plot');"
            "return g ? g.data.reduce((n, t) => n + t.x.length, 0) : 0;")
        assert timeline_points > 0, "extendData added no point to the per-track timeline"
        _open(browser, dashboard + "/health", "Pipeline health")
        _wait(browser, lambda d: "classifier-test-1"[-10:] in d.find_element(By.ID, "health-replicas").text,
              what="the classifier heartbeat")
        time.sleep(7)  # a few refreshes, so the throughput chart has a line
        _shot(browser, "health-live")
    assert not _severe(browser)


def test_analyze_page_annotates_a_real_face(dashboard, browser, face_png):  # noqa: F811
    """Uploading a photo of a real face gives back an annotated image and a probability row per face."""
    from selenium.webdriver.common.by import By

    _open(browser, dashboard + "/analyze", "Analyze")
    browser.find_element(By.CSS_SELECTOR, "#analyze-upload input[type=file]").send_keys(str(face_png))
    _wait(browser, lambda d: d.find_elements(By.ID, "analyze-image"), timeout=60, what="the annotated image")
    summary = browser.find_element(By.ID, "analyze-summary").text
    assert summary.startswith("1 face(s)") and "answered by model" in summary, summary
    rows = browser.find_elements(By.CSS_SELECTOR, ".prob-table tbody tr")
    assert len(rows) == 1 and "%" in rows[0].text
    src = browser.find_element(By.ID, "analyze-image").get_attribute("src")
    assert src.startswith("data:image/jpeg;base64,") and len(src) > 10_000
    _shot(browser, "analyze-astronaut")
    assert not _severe(browser)


def test_api_analyze_over_http(dashboard, face_png, served_model_dir):  # noqa: F811
    """The real server answers POST /api/analyze with faces, and 4xx for each kind of bad upload."""
    ok = requests.post(dashboard + "/api/analyze", files={"image": face_png.read_bytes()}, timeout=30)
    assert ok.status_code == 200
    body = ok.json()
    # Photos are answered by the accurate role: the shipped accurate model, else the served fast one.
    accurate = REPO_ROOT / "models" / "accurate"
    answering = accurate if (accurate / "metadata.json").exists() else served_model_dir
    assert body["model_version"] == read_metadata(answering).version and len(body["faces"]) == 1
    assert list(body["faces"][0]["probabilities"]) == ["angry", "disgust", "fear", "happy", "sad", "surprise",
                                                       "neutral"]
    assert requests.post(dashboard + "/api/analyze", files={"image": b"hello"}, timeout=10).status_code == 415
    assert requests.post(dashboard + "/api/analyze", files={"image": b""}, timeout=10).status_code == 400
    huge = b"\xff\xd8\xff" + bytes(20 * 1024 * 1024)
    assert requests.post(dashboard + "/api/analyze", files={"image": huge}, timeout=30).status_code == 413


def test_training_page_enqueues_a_job(dashboard, browser, redis_url_module, tmp_path):
    """Submitting the form puts a validated job on the RQ queue '<prefix>:training' and lists it as queued."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    from selenium.webdriver.common.by import By

    from tests.trainer_fixtures import write_fer_folder

    dataset = write_fer_folder(tmp_path / "fer2013", n_train=14, n_val=7)
    _open(browser, dashboard + "/training", "Training")
    _replace_text(browser.find_element(By.ID, "train-data"), str(dataset))
    _replace_text(browser.find_element(By.ID, "train-epochs"), "2")
    browser.find_element(By.ID, "train-submit").click()
    job_id = _wait(browser, lambda d: d.find_elements(By.ID, "train-job-id"), what="the enqueued job id")[0].text
    queue = Queue(Keys(PREFIX).training_queue, connection=redis.Redis.from_url(redis_url_module),
                  serializer=JSONSerializer)
    assert job_id in queue.job_ids
    _wait(browser, lambda d: job_id[:12] in d.find_element(By.ID, "train-jobs").text, what="the job in the table")
    assert "queued (no worker)" in browser.find_element(By.ID, "train-jobs").text
    assert f"No worker is listening on queue '{Keys(PREFIX).training_queue}'" in browser.find_element(By.ID, "train-workers").text
    _shot(browser, "training-queued")
    queue.empty()
    assert not _severe(browser)


def test_training_page_refuses_a_path_that_is_no_dataset(dashboard, browser, redis_url_module):
    """/etc used to be enqueued, and the job failed only once a worker ran it; the page also lists the
    shipped default model among the versions, as the one served."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    from selenium.webdriver.common.by import By

    queue = Queue(Keys(PREFIX).training_queue, connection=redis.Redis.from_url(redis_url_module),
                  serializer=JSONSerializer)  # the queue the page enqueues on
    before = len(queue.job_ids)
    _open(browser, dashboard + "/training", "Training")
    _replace_text(browser.find_element(By.ID, "train-data"), "/etc")
    browser.find_element(By.ID, "train-submit").click()
    _wait(browser, lambda d: "Not enqueued" in d.find_element(By.ID, "train-message").text, what="the refusal")
    message = browser.find_element(By.ID, "train-message").text
    assert "/etc does not look like a FER-2013 dataset" in message, message
    assert len(queue.job_ids) == before
    _wait(browser, lambda d: "default (shipped:" in d.find_element(By.ID, "train-versions").text,
          what="the default model among the versions")
    assert "serving" in browser.find_element(By.ID, "train-versions").text
    assert not _severe(browser)


def test_analyze_page_says_why_an_upload_is_refused(dashboard, browser, tmp_path):
    """Too large (refused in the browser), wrong type (a TIFF) and corrupt uploads each show a message;
    the page used to show nothing at all for a 14 MB file or a TIFF."""
    import cv2
    import numpy as np
    from selenium.webdriver.common.by import By

    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(14 * 1024 * 1024))
    tiff = tmp_path / "scan.tiff"
    cv2.imwrite(str(tiff), np.full((64, 64, 3), 128, np.uint8))
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _open(browser, dashboard + "/analyze", "Analyze")
    upload = browser.find_element(By.CSS_SELECTOR, "#analyze-upload input[type=file]")
    upload.send_keys(str(big))
    _wait(browser, lambda d: "exceeds the limit" in d.find_element(By.ID, "analyze-client-banner").text,
          timeout=40, what="the size refusal")
    assert "huge.jpg" in browser.find_element(By.ID, "analyze-client-banner").text
    for path, expected in ((tiff, "not a supported image"), (corrupt, "broken.png")):
        upload = browser.find_element(By.CSS_SELECTOR, "#analyze-upload input[type=file]")
        upload.send_keys(str(path))
        _wait(browser, lambda d, e=expected: e in d.find_element(By.ID, "analyze-banner").text, timeout=40,
              what=f"the message for {path.name}")
        assert browser.find_element(By.ID, "analyze-client-banner").text == ""
    _shot(browser, "analyze-refused")
    assert not _severe(browser)


def test_live_page_shows_a_stopped_pipeline_as_stopped(dashboard, browser, redis_url_module):
    """When capture stops, its camera is shown as stopped (no stale frame passed off as live), with a banner."""
    from selenium.webdriver.common.by import By

    _open(browser, dashboard + "/live", "Live")
    with Feeder(redis_url_module, ("cam-east",)):
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-camera='cam-east'][data-state='live']"),
              what="cam-east live")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-camera='cam-east'][data-state='stopped']"),
          what="cam-east stopped")
    card = browser.find_element(By.CSS_SELECTOR, "[data-camera='cam-east']")
    assert not card.find_elements(By.TAG_NAME, "img") and "Capture stopped" in card.text
    assert "pipeline is stopped" in browser.find_element(By.ID, "live-banner").text
    _shot(browser, "live-stopped")
    assert not _severe(browser)


def test_sessions_page_empty_state(dashboard, browser):
    """An unknown (or empty) session shows an explanation instead of empty charts or an error."""
    from selenium.webdriver.common.by import By

    _open(browser, dashboard + "/sessions?session=s-does-not-exist", "Session report")
    _wait(browser, lambda d: "s-does-not-exist" in d.find_element(By.CLASS_NAME, "page").text
          or d.find_elements(By.CSS_SELECTOR, "#session-banner .banner"), what="the empty state")
    time.sleep(1)
    _shot(browser, "sessions-empty")
    assert not _severe(browser)


def test_sessions_and_history_pages_draw_a_recorded_session(dashboard, browser, dashboard_database_url):
    """The original end-of-session report (counts, shares, mean probabilities), from real stored rows."""
    from selenium.webdriver.common.by import By

    from shared.store import make_engine, record_events

    start_ms = int(time.time() * 1000) - 120_000
    labels = ["happy"] * 30 + ["sad"] * 12 + ["surprise"] * 8
    events = [emotion_event("cam-report", i, label=label, session_id="s-report", captured_ms=start_ms + 1000 * i)
              for i, label in enumerate(labels)]
    engine = make_engine(dashboard_database_url)
    assert record_events(engine, events) == len(events)
    engine.dispose()
    _open(browser, dashboard + "/sessions?session=s-report", "Session report")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .pie, .js-plotly-plot .barlayer"))
          >= 1, timeout=40, what="the session charts")
    page = browser.find_element(By.CLASS_NAME, "page").text
    assert "No faces were recorded" not in page
    _shot(browser, "sessions-report")
    _open(browser, dashboard + "/history", "History")
    time.sleep(3)
    _shot(browser, "history")
    assert not _severe(browser)
