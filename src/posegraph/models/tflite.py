"""TFLite flatbuffers → ONNX, for the operators MediaPipe's BlazePose models use.

MediaPipe ships its pose models as TFLite files (float16 weights, some stored sparse). posegraph
serves every network with onnxruntime, so these are converted once, at fetch time, into an ONNX
graph with the same numbers: the constants (DENSIFY of a sparse tensor, DEQUANTIZE of float16)
are computed here, and the operators become their ONNX equivalents. TFLite works in NHWC, ONNX's
convolutions in NCHW: a 4-D activation is kept in NCHW from the input's one Transpose on, and an
operator whose meaning depends on the layout (RESHAPE, an output) gets it back in NHWC.

Covered: CONV_2D, DEPTHWISE_CONV_2D, ADD, PAD, MAX_POOL_2D, RESIZE_BILINEAR, DEPTH_TO_SPACE,
RESHAPE, CONCATENATION, LOGISTIC, DEQUANTIZE and DENSIFY of constants, with their fused
activations. Anything else is refused by name, so a new model file fails at conversion, not in
use. tests/test_blazepose.py checks the result against Google's own TFLite runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TensorType → numpy (schema.fbs)
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
NCHW, NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


class ConversionError(ValueError):
    pass


def _builtin_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def _options(op, cls):
    table = op.BuiltinOptions()
    options = cls()
    options.Init(table.Bytes, table.Pos)
    return options


def _index_vector(metadata, which: str) -> np.ndarray:
    """A sparse dimension's segments or indices (a union of int32/uint16/uint8 vectors)."""
    import tflite

    kind = getattr(metadata, f"Array{which}Type")()
    table = getattr(metadata, f"Array{which}")()
    cls = {tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
           tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
           tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector}[kind]
    vector = cls()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy()


def densify(values: np.ndarray, shape: list[int], sparsity) -> np.ndarray:
    """A sparse constant (TFLite's sparsity parameters: a traversal order, block map and per
    dimension either a dense size or CSR segments and indices) as a dense array of ``shape``.
    Walks the stored values in traversal order, as TFLite's format converter does."""
    rank = len(shape)
    order = [int(i) for i in sparsity.TraversalOrderAsNumpy()]
    block_map = [int(i) for i in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    levels = []
    for k in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(k)
        if meta.Format() == 0:  # DENSE
            levels.append(("dense", int(meta.DenseSize()), None, None))
        else:  # SPARSE_CSR
            levels.append(("csr", None, _index_vector(meta, "Segments"), _index_vector(meta, "Indices")))
    block_size = [levels[order[rank + b]][1] for b in range(len(block_map))]
    dense = np.zeros(shape, values.dtype)
    position = 0
    index = [0] * len(order)

    def place() -> None:
        nonlocal position
        original = [0] * rank
        for level in range(rank):
            original[order[level]] = index[level]
        for level in range(rank, len(order)):
            b = order[level] - rank
            original[block_map[b]] = original[block_map[b]] * block_size[b] + index[level]
        dense[tuple(original)] = values[position]
        position += 1

    def walk(level: int, previous: int) -> None:
        if level == len(order):
            place()
            return
        kind, size, segments, indices = levels[level]
        if kind == "dense":
            for i in range(size):
                index[level] = i
                walk(level + 1, previous * size + i)
        else:
            for i in range(int(segments[previous]), int(segments[previous + 1])):
                index[level] = int(indices[i])
                walk(level + 1, i)

    walk(0, 0)
    if position != len(values):
        raise ConversionError(f"sparse constant of shape {shape}: {position} of its {len(values)} values placed")
    return dense


@dataclass
class _Converter:
    model: object
    graph: object
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    consts: dict[int, np.ndarray] = field(default_factory=dict)   # tensor index → value (folded)
    names: dict[int, str] = field(default_factory=dict)           # tensor index → ONNX name
    layout: dict[int, str] = field(default_factory=dict)          # tensor index → "nchw" | "plain"
    counter: int = 0

    # -- tensors ---------------------------------------------------------------------------------------
    def shape(self, t: int) -> list[int]:
        return [int(d) for d in self.graph.Tensors(t).ShapeAsNumpy()]

    def raw_const(self, t: int) -> np.ndarray | None:
        tensor = self.graph.Tensors(t)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            return None
        values = np.frombuffer(data.tobytes(), DTYPES[tensor.Type()])
        sparsity = tensor.Sparsity()
        if sparsity is not None:
            return values  # densified by the DENSIFY operator that reads it
        return values.reshape(self.shape(t))

    def const(self, t: int) -> np.ndarray | None:
        if t not in self.consts:
            value = self.raw_const(t)
            if value is not None:
                self.consts[t] = value
        return self.consts.get(t)

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def initializer(self, value: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        from onnx import helper

        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def value(self, t: int, want: str) -> str:
        """The ONNX name of tensor ``t`` in layout ``want`` (nchw, or plain: TFLite's own)."""
        c = self.const(t)
        if c is not None:
            c = c.astype(np.float32) if c.dtype == np.float16 else c
            if want == "nchw" and c.ndim == 4:
                c = c.transpose(NCHW)
            elif want == "nchw" and c.ndim == 1:
                c = c.reshape(1, -1, 1, 1)
            return self.initializer(c, "const")
        have = self.layout[t]
        if have == want or len(self.shape(t)) != 4:
            return self.names[t]
        return self.node("Transpose", [self.names[t]], "to_" + want, perm=list(NCHW if want == "nchw" else NHWC))

    def produce(self, t: int, name: str, layout: str) -> None:
        self.names[t], self.layout[t] = name, layout

    def activation(self, name: str, fused: int) -> str:
        if fused == 0:
            return name
        if fused == 1:
            return self.node("Relu", [name], "relu")
        bounds = {2: (-1.0, 1.0), 3: (0.0, 6.0)}.get(fused)
        if bounds is None:
            raise ConversionError(f"fused activation {fused} is not converted")
        lo = self.initializer(np.array(bounds[0], np.float32), "lo")
        hi = self.initializer(np.array(bounds[1], np.float32), "hi")
        return self.node("Clip", [name, lo, hi], "clip")

    # -- padding ---------------------------------------------------------------------------------------
    @staticmethod
    def same_pads(size: list[int], kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
        """TensorFlow's SAME padding for static sizes, as ONNX pads (begins, then ends)."""
        begins, ends = [], []
        for n, k, s, d in zip(size, kernel, stride, dilation):
            effective = (k - 1) * d + 1
            total = max((-(-n // s) - 1) * s + effective - n, 0)
            begins.append(total // 2)
            ends.append(total - total // 2)
        return begins + ends

    def pads(self, padding: int, t_in: int, kernel, stride, dilation=(1, 1)) -> list[int]:
        if padding == 1:  # VALID
            return [0, 0, 0, 0]
        _, h, w, _ = self.shape(t_in)
        return self.same_pads([h, w], list(kernel), list(stride), list(dilation))

    # -- operators: one method each, named after TFLite's (``convert`` dispatches) ---------------------
    def convert(self, op, name: str) -> None:
        method = getattr(self, f"op_{name.lower()}", None)
        if method is None:
            raise ConversionError(f"TFLite operator {name} is not converted (posegraph.models.tflite)")
        method(op, [int(i) for i in op.InputsAsNumpy()], int(op.OutputsAsNumpy()[0]))

    def layout_of(self, t: int) -> str:
        return "nchw" if len(self.shape(t)) == 4 else "plain"

    def op_densify(self, op, ins, out) -> None:
        tensor = self.graph.Tensors(ins[0])
        self.consts[out] = densify(self.raw_const(ins[0]), self.shape(out), tensor.Sparsity())

    def op_dequantize(self, op, ins, out) -> None:
        source = self.const(ins[0])
        if source is None:
            raise ConversionError("DEQUANTIZE of a computed tensor is not converted (only of constants)")
        quant = self.graph.Tensors(ins[0]).Quantization()
        if source.dtype != np.float16 and quant is not None and quant.ScaleLength():
            scale, zero = quant.ScaleAsNumpy(), quant.ZeroPointAsNumpy()
            shape = [1] * source.ndim
            shape[quant.QuantizedDimension()] = -1
            source = (source.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)
        self.consts[out] = source.astype(np.float32).reshape(self.shape(out))

    def _convolution(self, op, ins, out, depthwise: bool) -> None:
        import tflite

        o = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
        weight = self.const(ins[1])
        if weight is None:
            raise ConversionError("a convolution with computed weights is not converted")
        weight = weight.astype(np.float32)
        kernel = weight.shape[1:3]
        if depthwise:  # [1, kh, kw, C·m] → [C·m, 1, kh, kw], one group per input channel
            weight, group = weight.transpose(3, 0, 1, 2), self.shape(ins[0])[3]
        else:  # [O, kh, kw, I] → [O, I, kh, kw]
            weight, group = weight.transpose(0, 3, 1, 2), 1
        inputs = [self.value(ins[0], "nchw"), self.initializer(weight, "w")]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.initializer(self.const(ins[2]).astype(np.float32), "b"))
        stride, dilation = [o.StrideH(), o.StrideW()], [o.DilationHFactor(), o.DilationWFactor()]
        y = self.node("Conv", inputs, "conv", kernel_shape=list(kernel), strides=stride, dilations=dilation,
                      group=group, pads=self.pads(o.Padding(), ins[0], kernel, stride, dilation))
        self.produce(out, self.activation(y, o.FusedActivationFunction()), "nchw")

    def op_conv_2d(self, op, ins, out) -> None:
        self._convolution(op, ins, out, depthwise=False)

    def op_depthwise_conv_2d(self, op, ins, out) -> None:
        self._convolution(op, ins, out, depthwise=True)

    def op_max_pool_2d(self, op, ins, out) -> None:
        import tflite

        o = _options(op, tflite.Pool2DOptions)
        kernel, stride = [o.FilterHeight(), o.FilterWidth()], [o.StrideH(), o.StrideW()]
        y = self.node("MaxPool", [self.value(ins[0], "nchw")], "pool", kernel_shape=kernel, strides=stride,
                      pads=self.pads(o.Padding(), ins[0], kernel, stride))
        self.produce(out, self.activation(y, o.FusedActivationFunction()), "nchw")

    def op_add(self, op, ins, out) -> None:
        import tflite

        o, layout = _options(op, tflite.AddOptions), self.layout_of(out)
        y = self.node("Add", [self.value(ins[0], layout), self.value(ins[1], layout)], "add")
        self.produce(out, self.activation(y, o.FusedActivationFunction()), layout)

    def op_pad(self, op, ins, out) -> None:
        if len(self.shape(out)) != 4:
            raise ConversionError("PAD of a tensor that is not 4-D is not converted")
        p = self.const(ins[1])[list(NCHW)].astype(np.int64)  # NHWC rows → N, C, H, W
        pads = self.initializer(np.concatenate([p[:, 0], p[:, 1]]), "pads")
        self.produce(out, self.node("Pad", [self.value(ins[0], "nchw"), pads], "pad"), "nchw")

    def op_resize_bilinear(self, op, ins, out) -> None:
        import tflite

        o = _options(op, tflite.ResizeBilinearOptions)
        (_, h, w, _), (_, h_in, w_in, _) = self.shape(out), self.shape(ins[0])
        mode = "align_corners" if o.AlignCorners() else "half_pixel" if o.HalfPixelCenters() else "asymmetric"
        # scales, not sizes: the batch stays free (sizes would fix it at the file's 1)
        scales = self.initializer(np.array([1, 1, h / h_in, w / w_in], np.float32), "scales")
        y = self.node("Resize", [self.value(ins[0], "nchw"), "", scales], "resize", mode="linear",
                      coordinate_transformation_mode=mode)
        self.produce(out, y, "nchw")

    def op_depth_to_space(self, op, ins, out) -> None:
        import tflite

        o = _options(op, tflite.DepthToSpaceOptions)  # TensorFlow's order is ONNX's DCR
        y = self.node("DepthToSpace", [self.value(ins[0], "nchw")], "d2s", blocksize=o.BlockSize(), mode="DCR")
        self.produce(out, y, "nchw")

    def op_reshape(self, op, ins, out) -> None:
        shape = self.initializer(np.array([-1, *self.shape(out)[1:]], np.int64), "shape")  # batch free
        y = self.node("Reshape", [self.value(ins[0], "plain"), shape], "reshape")
        if len(self.shape(out)) == 4:
            self.produce(out, self.node("Transpose", [y], "to_nchw", perm=list(NCHW)), "nchw")
        else:
            self.produce(out, y, "plain")

    def op_concatenation(self, op, ins, out) -> None:
        import tflite

        o, layout = _options(op, tflite.ConcatenationOptions), self.layout_of(out)
        axis = o.Axis() % len(self.shape(out))
        if layout == "nchw":
            axis = NCHW.index(axis)
        y = self.node("Concat", [self.value(i, layout) for i in ins], "concat", axis=axis)
        self.produce(out, self.activation(y, o.FusedActivationFunction()), layout)

    def op_logistic(self, op, ins, out) -> None:
        layout = self.layout_of(out)
        self.produce(out, self.node("Sigmoid", [self.value(ins[0], layout)], "sigmoid"), layout)


def convert(path: str | Path):
    """The TFLite model at ``path`` as an onnx.ModelProto with the same inputs and outputs (names,
    NHWC shapes, the batch dimension free where the file fixes it at 1) and the same numbers."""
    import tflite
    from onnx import TensorProto, helper

    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    if model.SubgraphsLength() != 1:
        raise ConversionError(f"{path}: {model.SubgraphsLength()} subgraphs; one is converted")
    graph = model.Subgraphs(0)
    names = _builtin_names()
    conv = _Converter(model, graph)
    inputs = []
    for k in range(graph.InputsLength()):
        t = graph.Inputs(k)
        name = graph.Tensors(t).Name().decode()
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *conv.shape(t)[1:]]))
        conv.produce(t, name, "plain")
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        code = model.OperatorCodes(op.OpcodeIndex())
        conv.convert(op, names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?"))
    outputs = []
    for k in range(graph.OutputsLength()):
        t = graph.Outputs(k)
        name = graph.Tensors(t).Name().decode()
        conv.nodes.append(helper.make_node("Identity", [conv.value(t, "plain")], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *conv.shape(t)[1:]]))
    onnx_graph = helper.make_graph(conv.nodes, Path(path).stem, inputs, outputs, conv.initializers)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="posegraph.models.tflite")
    onnx_model.ir_version = 8
    return onnx_model
