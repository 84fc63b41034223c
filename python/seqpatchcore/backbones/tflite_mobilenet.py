"""MobileNet rebuilt in PyTorch from an (8-bit) TFLite flatbuffer.

The TFLite graph is read with the `tflite` flatbuffer package and replayed op by op as float32
torch modules: weights and biases are dequantized, batch norm is already folded, convolutions
use TensorFlow "SAME" padding for any input size, and every squeeze-excite average pool becomes
a global average pool. See Note [Activations from output ranges] for how ReLU / ReLU6 are
recovered, and docs/backbone.md for the decisions.

Layer names are the TFLite block scopes (the second component of a tensor name such as
"MobilenetV3/expanded_conv_2/add"); a block's output is the last tensor its ops produce, i.e.
after the residual ADD when the block has one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqpatchcore.backbones.base import Backbone, LayerInfo, file_sha256, resolve_weights

logger = logging.getLogger(__name__)

MOBILENET_V3_SMALL_FILE = "mobilenet_v3_small_1.0_224.uint8.tflite"
MOBILENET_V3_SMALL_FOLDER = "mobilenet_v3_small_1.0_224_uint8"
MOBILENET_V2_FILE = "mobilenet_v2_1.0_224.uint8.tflite"
MOBILENET_V2_FOLDER = "mobilenet_v2_1.0_224_uint8"

SUPPORTED_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "ADD",
    "MUL",
    "HARD_SWISH",
    "AVERAGE_POOL_2D",
    "RESHAPE",
    "SOFTMAX",
)

# Note [Activations from output ranges]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The converter folds ReLU and ReLU6 into the quantization of the producing op's output: the
# op's fused_activation_function says NONE, but its uint8 output can only represent
# [s * (0 - z), s * (255 - z)]. The integer kernels clamp to that range, so:
#   - range starts at exactly 0 (zero point = lowest code) and ends within one step of 6:
#     ReLU6 (e.g. the "add 3" of every hard-sigmoid, range [0, 5.9998]);
#   - range starts at exactly 0 and ends elsewhere: ReLU (e.g. ".../depthwise/Relu",
#     [0, 253.1], and the squeeze-excite ".../Conv/Relu");
#   - anything else: no activation.
# The upper end of a ReLU range is saturation of the 8-bit code, not part of the network, so
# it is not reproduced. An explicit fused activation (float checkpoints) takes precedence.
_RELU6_LIMIT = 6.0

_TENSOR_DTYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8, 7: np.int16, 4: np.int64}
_QUANT_RANGES = {3: (0, 255), 9: (-128, 127)}


class TFLiteFormatError(ValueError):
    """A file that is not a TFLite model, or one that uses something not supported."""


def _op_names() -> dict[int, str]:
    import tflite

    return {
        value: key
        for key, value in vars(tflite.BuiltinOperator).items()
        if not key.startswith("_") and isinstance(value, int)
    }


@dataclasses.dataclass
class TensorSpec:
    """One tensor of the flatbuffer, as stored (NHWC shapes, raw codes)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: int
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dimension: int
    data: np.ndarray | None  # constant contents, None for activations

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale.size > 0 and self.dtype != 0

    def dequantize(self) -> np.ndarray:
        """Constant contents as float32: s * (q - z), per tensor or per channel."""
        values = self.data.astype(np.float64)
        if not self.quantized:
            return values.astype(np.float32)
        scale, zero = self.scale.astype(np.float64), self.zero_point.astype(np.float64)
        if scale.size > 1:
            view = [1] * values.ndim
            view[self.quantized_dimension] = scale.size
            scale, zero = scale.reshape(view), zero.reshape(view)
        return ((values - zero) * scale).astype(np.float32)

    def value_range(self) -> tuple[float, float] | None:
        """Float range representable by a per-tensor quantized activation, else None."""
        if not self.quantized or self.scale.size != 1 or self.dtype not in _QUANT_RANGES:
            return None
        lowest, highest = _QUANT_RANGES[self.dtype]
        scale, zero = float(self.scale[0]), int(self.zero_point[0])
        return scale * (lowest - zero), scale * (highest - zero)


@dataclasses.dataclass
class OpSpec:
    """One operator of the flatbuffer."""

    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object | None


@dataclasses.dataclass
class GraphSpec:
    """The single subgraph of a TFLite model."""

    path: Path
    tensors: list[TensorSpec]
    ops: list[OpSpec]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_tflite(path: Path) -> GraphSpec:
    """Parse a TFLite flatbuffer into tensors and ops.

    Raises:
        TFLiteFormatError: the file is not a TFLite flatbuffer, or not a single-subgraph model.
    """
    import tflite

    raw = path.read_bytes()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise TFLiteFormatError(
            f"{path}: not a TFLite flatbuffer (expected the file "
            f"identifier b'TFL3' at bytes 4..8, got {raw[4:8]!r})"
        )

    try:
        model = tflite.Model.GetRootAsModel(raw, 0)
        if model.SubgraphsLength() != 1:
            raise TFLiteFormatError(f"{path}: expected 1 subgraph, got {model.SubgraphsLength()}")
        graph = model.Subgraphs(0)
        tensors = [_read_tensor(model, graph, k, raw) for k in range(graph.TensorsLength())]
        names = _op_names()
        ops = []
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            code = model.OperatorCodes(op.OpcodeIndex())
            # Old files only fill the deprecated int8 field; new ones set both.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            ops.append(
                OpSpec(
                    k,
                    names.get(builtin, f"builtin#{builtin}"),
                    tuple(int(i) for i in op.InputsAsNumpy()),
                    tuple(int(i) for i in op.OutputsAsNumpy()),
                    _read_options(op),
                )
            )
        inputs = tuple(int(i) for i in graph.InputsAsNumpy())
        outputs = tuple(int(i) for i in graph.OutputsAsNumpy())
    except TFLiteFormatError:
        raise
    except Exception as error:  # a truncated or corrupt flatbuffer fails anywhere inside
        raise TFLiteFormatError(
            f"{path}: cannot parse the TFLite flatbuffer ({type(error).__name__}: {error})"
        ) from error

    return GraphSpec(path, tensors, ops, inputs, outputs)


def _read_tensor(model, graph, index: int, raw: bytes) -> TensorSpec:
    tensor = graph.Tensors(index)
    quant = tensor.Quantization()
    scale = zero = None
    axis = 0
    if quant is not None and quant.ScaleLength() > 0:
        scale = quant.ScaleAsNumpy().astype(np.float32)
        zero = (
            quant.ZeroPointAsNumpy()
            if quant.ZeroPointLength() > 0
            else np.zeros_like(scale, dtype=np.int64)
        )
        axis = quant.QuantizedDimension()

    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    data = None
    buffer = model.Buffers(tensor.Buffer())
    if buffer is not None:
        if buffer.DataLength() > 0:
            payload = buffer.DataAsNumpy().tobytes()
        elif buffer.Offset() > 1:
            # Large models keep constants after the flatbuffer, addressed by offset.
            payload = raw[buffer.Offset() : buffer.Offset() + buffer.Size()]
        else:
            payload = b""
        if payload:
            dtype = _TENSOR_DTYPES.get(tensor.Type())
            if dtype is None:
                raise TFLiteFormatError(
                    f"tensor '{tensor.Name().decode()}' has unsupported type code {tensor.Type()}"
                )
            data = np.frombuffer(payload, dtype=dtype).reshape(shape)

    return TensorSpec(index, tensor.Name().decode(), shape, tensor.Type(), scale, zero, axis, data)


def _read_options(op):
    import tflite

    table = op.BuiltinOptions()
    if table is None:
        return None
    classes = {
        tflite.BuiltinOptions.Conv2DOptions: tflite.Conv2DOptions,
        tflite.BuiltinOptions.DepthwiseConv2DOptions: tflite.DepthwiseConv2DOptions,
        tflite.BuiltinOptions.Pool2DOptions: tflite.Pool2DOptions,
        tflite.BuiltinOptions.AddOptions: tflite.AddOptions,
        tflite.BuiltinOptions.MulOptions: tflite.MulOptions,
        tflite.BuiltinOptions.SoftmaxOptions: tflite.SoftmaxOptions,
        tflite.BuiltinOptions.ReshapeOptions: tflite.ReshapeOptions,
    }
    options_class = classes.get(op.BuiltinOptionsType())
    if options_class is None:
        return None
    options = options_class()
    options.Init(table.Bytes, table.Pos)
    return options


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis.

    The output has ceil(size / stride) cells; the padding needed for that is split with the
    smaller half before and the larger half after (bottom / right).

    Args:
        size: input length in cells.
        kernel: kernel length.
        stride: stride.
        dilation: dilation of the kernel.

    Returns:
        (before, after) padding in cells.
    """
    out = -(-size // stride)
    reach = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + reach - size, 0)
    return total // 2, total - total // 2


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "relu6":
        return F.relu6(x)
    if activation == "relu_n1_to_1":
        return x.clamp(-1.0, 1.0)
    return x


class GraphOp(torch.nn.Module):
    """One replayed TFLite operator; `name` is its output tensor's TFLite name."""

    def __init__(self, name: str, activation: str = "none"):
        super().__init__()
        self.name = name
        self.activation = activation

    def extra_repr(self) -> str:
        return f"'{self.name}', activation={self.activation}"


class Conv(GraphOp):
    """CONV_2D or DEPTHWISE_CONV_2D with TensorFlow SAME or VALID padding.

    Weights arrive in torch layout [out, in / groups, kh, kw].
    """

    def __init__(
        self,
        name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        same: bool,
        activation: str,
    ):
        super().__init__(name, activation)
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W] -> [B, C_out, ceil(H / s), ceil(W / s)] (SAME)
        kernel_h, kernel_w = self.weight.shape[2:]
        padding = (0, 0)
        if self.same:
            top, bottom = same_padding(x.shape[2], kernel_h, self.stride[0], self.dilation[0])
            left, right = same_padding(x.shape[3], kernel_w, self.stride[1], self.dilation[1])
            if top == bottom and left == right:
                padding = (top, left)
            else:
                # Padding with zeros is exact: the quantized kernels pad with the input zero
                # point, which stands for 0.0.
                x = F.pad(x, (left, right, top, bottom))
        y = F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return _activate(y, self.activation)

    def extra_repr(self) -> str:
        out_channels, _, kernel_h, kernel_w = self.weight.shape
        kind = "depthwise" if self.groups > 1 else "conv"
        return (
            f"{kind} {kernel_h}x{kernel_w}/{self.stride[0]} -> {out_channels}, "
            f"{'SAME' if self.same else 'VALID'}, {super().extra_repr()}"
        )


class Binary(GraphOp):
    """ADD or MUL of two tensors, or of a tensor and a constant, with NCHW broadcasting."""

    def __init__(self, name: str, kind: str, constant: torch.Tensor | None, activation: str):
        super().__init__(name, activation)
        self.kind = kind
        self.register_buffer("constant", constant)

    def forward(self, *operands: torch.Tensor) -> torch.Tensor:
        a = operands[0]
        b = operands[1] if self.constant is None else self.constant
        y = a + b if self.kind == "ADD" else a * b
        return _activate(y, self.activation)

    def extra_repr(self) -> str:
        constant = "" if self.constant is None else f" const {self.constant.flatten()[:4]}"
        return f"{self.kind}{constant}, {super().extra_repr()}"


class HardSwish(GraphOp):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(F.hardswish(x), self.activation)


class GlobalAveragePool(GraphOp):
    """An AVERAGE_POOL_2D whose window covered the whole map at the native input size.

    Made adaptive so that other input sizes still pool the whole map (squeeze-excite and the
    head): [B, C, H, W] -> [B, C, 1, 1].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(x.mean(dim=(2, 3), keepdim=True), self.activation)


class Flatten(GraphOp):
    """RESHAPE of a [B, C, 1, 1] map to [B, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Softmax(GraphOp):
    """SOFTMAX over the class axis of [B, classes]."""

    def __init__(self, name: str, beta: float):
        super().__init__(name)
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.beta * x, dim=-1)


class TFLiteMobileNet(Backbone):
    """A TFLite image classifier replayed in float32 PyTorch, frozen and in eval mode.

    Built with `TFLiteMobileNet.from_file`. The layers are the spatial TFLite blocks, e.g. for
    MobileNetV3-Small: "Conv" (stride 2, 16 ch), "expanded_conv" (4, 16), "expanded_conv_1" /
    "_2" (8, 24), "expanded_conv_3" .. "_5" (16, 40), "expanded_conv_6" / "_7" (16, 48),
    "expanded_conv_8" .. "_10" (32, 96), "Conv_1" (32, 576).

    Attributes:
        identity: "tflite:<file name>:sha256=<first 16 hex digits of the file's SHA-256>".
        path: the weights file.
        layer_tensors: layer name -> name of the TFLite tensor that is its output.
        ops: the replayed operators, in graph order; `ops[k].name` names its output tensor.
        op_inputs: for each op, the TFLite names of the computed tensors it takes, in order
            (constant operands live inside the op).
        quantize_activations: False (default): pure float32 re-execution, used for features.
            True: every op output is rounded to its 8-bit grid and saturated as the integer
            kernels do, to check the rebuild against the TFLite interpreter.
    """

    def __init__(
        self,
        path: Path,
        identity: str,
        ops: Sequence[GraphOp],
        wiring: Sequence[tuple[tuple[int, ...], int]],
        input_tensor: TensorSpec,
        logits_tensor: int,
        layers: dict[str, tuple[int, LayerInfo, str]],
        output_grids: Sequence[tuple[float, int, int, int] | None],
        tensor_names: dict[int, str],
    ):
        super().__init__()
        self.path = path
        self._file_identity = identity
        self.quantize_activations = False
        self.ops = torch.nn.ModuleList(ops)
        self._wiring = list(wiring)
        self._output_grids = list(output_grids)
        self.op_inputs = [tuple(tensor_names[i] for i in inputs) for inputs, _ in self._wiring]
        self._input_id = input_tensor.index
        if input_tensor.quantized and input_tensor.value_range() is None:
            raise TFLiteFormatError(
                f"{path}: input tensor '{input_tensor.name}' must be uint8 or int8 with one scale"
            )
        self._input_scale = None
        if input_tensor.quantized:
            self._input_scale = (
                float(input_tensor.scale[0]),
                float(input_tensor.zero_point[0]),
                _QUANT_RANGES[input_tensor.dtype][0],
            )
        self._logits_id = logits_tensor
        self._layers = {name: (tensor, info) for name, (tensor, info, _) in layers.items()}
        self.layer_tensors = {name: tensor_name for name, (_, _, tensor_name) in layers.items()}

        self._producer = {output: k for k, (_, output) in enumerate(self._wiring)}
        last_use: dict[int, int] = {}
        for k, (inputs, _) in enumerate(self._wiring):
            for tensor in inputs:
                last_use[tensor] = k
        self._release_after: list[list[int]] = [[] for _ in self._wiring]
        for tensor, k in last_use.items():
            self._release_after[k].append(tensor)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TFLiteMobileNet:
        """Read a TFLite classifier and rebuild it.

        Args:
            path: a .tflite file.

        Raises:
            FileNotFoundError: `path` does not exist.
            TFLiteFormatError: not a TFLite flatbuffer, or an op or pattern that is not
                supported (the message names the file and the op).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TFLite weights file not found: {path}")

        graph = read_tflite(path)
        if len(graph.inputs) != 1:
            raise TFLiteFormatError(f"{path}: expected 1 graph input, got {len(graph.inputs)}")
        input_tensor = graph.tensors[graph.inputs[0]]
        if len(input_tensor.shape) != 4 or input_tensor.shape[3] != 3:
            raise TFLiteFormatError(
                f"{path}: expected an NHWC RGB input, got shape {input_tensor.shape}"
            )

        ops, wiring, grids = [], [], []
        for op in graph.ops:
            module, dynamic_inputs = _build_op(graph, op)
            ops.append(module)
            wiring.append((dynamic_inputs, op.outputs[0]))
            grids.append(_quantization_grid(graph.tensors[op.outputs[0]]))

        logits = graph.outputs[0]
        for op in graph.ops:
            if op.kind == "SOFTMAX" and op.outputs[0] == graph.outputs[0]:
                logits = op.inputs[0]

        identity = f"tflite:{path.name.removesuffix('.tflite')}:sha256={file_sha256(path)[:16]}"
        layers = _spatial_blocks(graph, input_tensor)
        logger.info("rebuilt %d TFLite ops from %s (%s)", len(ops), path, identity)
        names = {tensor.index: tensor.name for tensor in graph.tensors}
        return cls(path, identity, ops, wiring, input_tensor, logits, layers, grids, names)

    @property
    def identity(self) -> str:
        """See the class docstring; ":quantized-activations" is appended in that mode."""
        suffix = ":quantized-activations" if self.quantize_activations else ""
        return self._file_identity + suffix

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        # images: [B, 3, H, W] in [0, 1] -> [B, 3, H, W] as the float graph sees the
        # dequantized uint8 input: s * (255 x - z), i.e. about [-1, 1] for MobileNet. A float
        # input tensor carries no scale; TF-slim MobileNets expect [-1, 1].
        if self._input_scale is None:
            return images * 2.0 - 1.0
        scale, zero, lowest = self._input_scale
        return (images * 255.0 + lowest - zero) * scale

    def layer_info(self) -> dict[str, LayerInfo]:
        return {name: info for name, (_, info) in self._layers.items()}

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        self.check_layers(layers)
        _check_input(x)
        wanted = {name: self._layers[name][0] for name in layers}
        values = self._run(x, set(wanted.values()))
        return {name: values[tensor] for name, tensor in wanted.items()}

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        logits = self._run(x, {self._logits_id})[self._logits_id]
        return logits.flatten(1)

    def _run(self, x: torch.Tensor, targets: set[int]) -> dict[int, torch.Tensor]:
        # Replays ops in graph order (topological in TFLite) up to the last producer of a
        # target, dropping each intermediate after its last consumer to bound memory.
        stop = max(self._producer[tensor] for tensor in targets)
        values = {self._input_id: x}
        for k in range(stop + 1):
            inputs, output = self._wiring[k]
            y = self.ops[k](*[values[tensor] for tensor in inputs])
            if self.quantize_activations and self._output_grids[k] is not None:
                y = _fake_quantize(y, *self._output_grids[k])
            values[output] = y
            for tensor in self._release_after[k]:
                if tensor not in targets:
                    del values[tensor]
        return {tensor: values[tensor] for tensor in targets}


def _quantization_grid(tensor: TensorSpec) -> tuple[float, int, int, int] | None:
    """(scale, zero point, lowest code, highest code) of a per-tensor quantized activation."""
    if tensor.value_range() is None:
        return None
    lowest, highest = _QUANT_RANGES[tensor.dtype]
    return float(tensor.scale[0]), int(tensor.zero_point[0]), lowest, highest


def _fake_quantize(
    y: torch.Tensor, scale: float, zero: int, lowest: int, highest: int
) -> torch.Tensor:
    # Rounds to the op's output code grid and saturates, as the integer kernels do.
    codes = torch.clamp(torch.round(y / scale) + zero, lowest, highest)
    return (codes - zero) * scale


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected the model input [B, 3, H, W] from preprocess(), got {shape}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"x: expected float32 or float64 model input from preprocess(), got {x.dtype}")


def _implied_activation(graph: GraphSpec, op: OpSpec) -> str:
    """The activation of an op: its fused one, else the one its output range implies.

    See Note [Activations from output ranges].
    """
    import tflite

    fused = getattr(op.options, "FusedActivationFunction", None)
    fused = fused() if fused is not None else 0
    kinds = {
        tflite.ActivationFunctionType.NONE: "none",
        tflite.ActivationFunctionType.RELU: "relu",
        tflite.ActivationFunctionType.RELU6: "relu6",
        tflite.ActivationFunctionType.RELU_N1_TO_1: "relu_n1_to_1",
    }
    if fused not in kinds:
        raise TFLiteFormatError(
            f"{graph.path}: operator #{op.index} {op.kind} has unsupported "
            f"fused activation code {fused}"
        )
    if kinds[fused] != "none":
        return kinds[fused]

    output = graph.tensors[op.outputs[0]]
    value_range = output.value_range()
    if value_range is None or value_range[0] != 0.0:
        return "none"
    step = float(output.scale[0])
    return "relu6" if abs(value_range[1] - _RELU6_LIMIT) <= step else "relu"


def _build_op(graph: GraphSpec, op: OpSpec) -> tuple[GraphOp, tuple[int, ...]]:
    """The torch module for one op and the ids of its non-constant inputs."""
    import tflite

    path = graph.path
    out = graph.tensors[op.outputs[0]]
    where = f"{path}: operator #{op.index} {op.kind} (output '{out.name}')"
    if op.kind not in SUPPORTED_OPS:
        raise TFLiteFormatError(
            f"{where} is not supported; supported ops: {', '.join(SUPPORTED_OPS)}"
        )
    inputs = [graph.tensors[i] if i >= 0 else None for i in op.inputs]
    source = inputs[0]
    if source is None or source.data is not None:
        raise TFLiteFormatError(f"{where}: expected a computed first input")

    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        weight_spec, bias_spec = inputs[1], (inputs[2] if len(inputs) > 2 else None)
        if weight_spec is None or weight_spec.data is None:
            raise TFLiteFormatError(f"{where}: expected constant weights")
        weight = torch.from_numpy(weight_spec.dequantize())
        options = op.options
        if op.kind == "CONV_2D":
            # TFLite [out, kh, kw, in] -> torch [out, in, kh, kw]
            weight = weight.permute(0, 3, 1, 2)
            groups = 1
        else:
            # TFLite [1, kh, kw, in * multiplier] -> torch [in * multiplier, 1, kh, kw]; output
            # channel c * multiplier + j reads input channel c, as in a grouped conv.
            weight = weight.permute(3, 0, 1, 2)
            groups = source.shape[3]
        bias = None
        if bias_spec is not None:
            if bias_spec.data is None:
                raise TFLiteFormatError(f"{where}: expected a constant bias")
            bias = torch.from_numpy(bias_spec.dequantize())
        same = options.Padding() == tflite.Padding.SAME
        stride = (options.StrideH(), options.StrideW())
        dilation = (options.DilationHFactor(), options.DilationWFactor())
        module = Conv(
            out.name,
            weight.contiguous(),
            bias,
            stride,
            dilation,
            groups,
            same,
            _implied_activation(graph, op),
        )
        return module, (source.index,)

    if op.kind in ("ADD", "MUL"):
        other = inputs[1]
        constant = None
        dynamic = (source.index, other.index)
        if other.data is not None:
            # A constant operand (the 3 and 1/6 of a hard-sigmoid): NHWC broadcast shapes of
            # rank <= 1 are channel vectors or scalars, which broadcast the same way in NCHW
            # once moved to the channel axis.
            values = torch.from_numpy(other.dequantize())
            if values.dim() > 1 and values.numel() != 1:
                raise TFLiteFormatError(
                    f"{where}: constant operand of shape {other.shape} is "
                    f"not supported (scalar or channel vector expected)"
                )
            constant = values.reshape(-1, 1, 1) if values.numel() > 1 else values.reshape(())
            dynamic = (source.index,)
        return Binary(out.name, op.kind, constant, _implied_activation(graph, op)), dynamic

    if op.kind == "HARD_SWISH":
        return HardSwish(out.name, _implied_activation(graph, op)), (source.index,)

    if op.kind == "AVERAGE_POOL_2D":
        options = op.options
        window = (options.FilterHeight(), options.FilterWidth())
        if len(source.shape) != 4 or window != source.shape[1:3] or out.shape[1:3] != (1, 1):
            raise TFLiteFormatError(
                f"{where}: only global average pools are supported (window "
                f"= input size, 1x1 output); got window {window} over "
                f"input {source.shape}"
            )
        return GlobalAveragePool(out.name, _implied_activation(graph, op)), (source.index,)

    if op.kind == "RESHAPE":
        if len(source.shape) != 4 or source.shape[1:3] != (1, 1) or len(out.shape) != 2:
            raise TFLiteFormatError(
                f"{where}: only [B, 1, 1, C] -> [B, C] reshapes are "
                f"supported; got {source.shape} -> {out.shape}"
            )
        return Flatten(out.name), (source.index,)

    # SOFTMAX
    beta = op.options.Beta() if op.options is not None else 1.0
    return Softmax(out.name, beta), (source.index,)


def _spatial_blocks(
    graph: GraphSpec, input_tensor: TensorSpec
) -> dict[str, tuple[int, LayerInfo, str]]:
    """Block name -> (output tensor id, geometry, TFLite tensor name) for spatial blocks.

    A block is the second scope of the op output names ("MobilenetV3/<block>/..."); its output
    is the last tensor one of its ops produces. Blocks after the global pool are left out.
    """
    last: dict[str, int] = {}
    for op in graph.ops:
        scopes = graph.tensors[op.outputs[0]].name.split("/")
        if len(scopes) >= 3:
            last[scopes[1]] = op.outputs[0]

    height, width = input_tensor.shape[1:3]
    blocks = {}
    for block, tensor_id in last.items():
        shape = graph.tensors[tensor_id].shape
        if len(shape) != 4 or (shape[1], shape[2]) == (1, 1):
            continue
        # SAME padding maps n cells to ceil(n / s); the smallest such s is the block's stride.
        stride = next(
            (
                s
                for s in range(1, height + 1)
                if (-(-height // s), -(-width // s)) == (shape[1], shape[2])
            ),
            None,
        )
        if stride is None:
            continue
        blocks[block] = (tensor_id, LayerInfo(stride, shape[3]), graph.tensors[tensor_id].name)
    return blocks


def default_weight_folders() -> list[Path]:
    """The project's shared folder beside a source checkout (`<repo>/../shared`), if any."""
    here = Path(__file__).resolve()
    if len(here.parents) < 5:
        return []
    return [here.parents[4] / "shared"]


def load_tflite_mobilenet(
    weights: str | os.PathLike | None = None,
    file_name: str = MOBILENET_V3_SMALL_FILE,
    folder_name: str = MOBILENET_V3_SMALL_FOLDER,
) -> TFLiteMobileNet:
    """Find and rebuild a TFLite MobileNet checkpoint; nothing is downloaded.

    Args:
        weights: the .tflite file, or a folder holding it (searched directly, in
            `<folder_name>/` and in `weights/<folder_name>/`). None: the environment variable
            SEQPATCHCORE_WEIGHTS, else the project's shared folder beside a source checkout.
        file_name: expected file name when searching folders.
        folder_name: the subfolder the checkpoint ships in.

    Returns:
        The rebuilt backbone on the CPU, float32, eval mode.
    """
    how_to_get = (
        f"The file ships in the project's shared folder as "
        f"weights/{folder_name}/{file_name}; the TensorFlow model garden publishes it "
        f"with the slim MobileNet checkpoints."
    )
    path = resolve_weights(
        weights,
        [file_name],
        [folder_name, f"weights/{folder_name}"],
        default_weight_folders(),
        how_to_get,
    )
    return TFLiteMobileNet.from_file(path)
