"""The IR: text round trip (examples and a property test), parse errors, the verifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bsnnc.compiler.passes.canonicalize import canonicalize
from bsnnc.compiler.passes.dce import dce
from bsnnc.ir import GraphBuilder, IRParseError, Kind, TensorType, VerifyError, parse, print_graph
from bsnnc.ir.diagnostics import format_diagnostic
from bsnnc.ir.graph import Constant, Graph, digest_array
from bsnnc.ir.nxview import is_acyclic, to_nx
from bsnnc.ir.ops import window_out
from bsnnc.ir.parser import MAX_INLINE_ELEMENTS
from bsnnc.ir.printer import format_float
from bsnnc.ir.types import STORAGE_DTYPE
from bsnnc.ir.verifier import verify


def small_graph() -> Graph:
    """input → conv(f32) → avgpool → relu → if → flatten → dense(bipolar) → scale → readout."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("small")
    x = b.input("x", TensorType(Kind.F32, (None, 2, 6, 6)))
    w = b.const("w0", Kind.F32, rng.normal(size=(4, 2, 3, 3)))
    y = b.add("conv2d", [x, w], {"pad": (1, 1, 1, 1)}, loc="/conv1/Conv")
    y = b.add("avgpool", [y], {"kernel": (2, 2), "stride": (2, 2), "ceil_mode": True})
    y = b.add("relu", [y])
    y = b.add("if", [y], {"theta": 0.25, "reset": "zero"})
    y = b.add("flatten", [y])
    w1 = b.const("w1", Kind.BIPOLAR, np.where(rng.normal(size=(5, 36)) > 0, 1, -1))
    y = b.add("dense", [y, w1])
    a = b.const("alpha", Kind.F32, rng.uniform(0.1, 1, 5))
    y = b.add("scale", [y, a], {"axis": 1})
    y = b.add("readout", [y])
    return b.finish([y])


def test_round_trip_example() -> None:
    g = small_graph()
    verify(g)
    text = print_graph(g)
    g2 = parse(text)
    verify(g2, check_data=False)
    assert print_graph(g2) == text
    assert g2 == g  # constants compare by name, type and hash; nodes by everything but position


def test_types_and_kinds_inferred() -> None:
    g = small_graph()
    kinds = [n.type.kind for n in g.nodes]
    assert kinds == [
        Kind.F32,
        Kind.F32,
        Kind.F32,
        Kind.F32,
        Kind.SPIKE,
        Kind.SPIKE,
        Kind.I32,
        Kind.F32,
        Kind.F32,
    ]
    assert str(g.nodes[-1].type) == "f32[?,5]"
    assert str(g.nodes[2].type) == "f32[?,4,3,3]"


def test_text_form_is_stable() -> None:
    text = print_graph(small_graph())
    assert text.startswith("// bsnnc IR v1\ngraph @small {\n")
    assert (
        "  %0 = conv2d(%x, @w0) {dilation=[1,1], pad=[1,1,1,1], stride=[1,1]} : "
        'f32[?,4,6,6] loc("/conv1/Conv")\n' in text
    )
    assert '  %3 = if(%2) {axis=1, reset="zero", theta=0.25} : spike[?,4,3,3]\n' in text
    assert text.endswith("  return %7\n}\n")


def test_missing_defaults_are_filled_by_the_parser() -> None:
    text = print_graph(small_graph()).replace(
        "{dilation=[1,1], pad=[1,1,1,1], stride=[1,1]}", "{pad=[1,1,1,1]}"
    )
    assert print_graph(parse(text)) == print_graph(small_graph())


@pytest.mark.parametrize(
    ("old", "new", "where", "expect"),
    [
        ("= relu(%1)", "= relux(%1)", (9, 8), "unknown op 'relux'"),
        ("avgpool(%0)", "avgpool(%0", (8, 19), "expected ')' or ','"),
        ("ceil_mode=true", "ceil_mode=3", (8, 21), "avgpool.ceil_mode must be bool"),
        ('reset="zero"', 'reset="half"', (10, 24), "if.reset must be one of subtract, zero"),
        ("theta=0.25", "thetaa=0.25", (10, 38), "if has no attribute 'thetaa'"),
        ("return %7", "return", (16, 1), "expected a value name like %0"),
        ("f32[?,2,6,6]", "f33[?,2,6,6]", (6, 18), "unexpected 'f33'; expected an element kind"),
    ],
)
def test_parse_errors_name_line_and_column(
    old: str, new: str, where: tuple[int, int], expect: str
) -> None:
    text = print_graph(small_graph())
    assert old in text
    with pytest.raises(IRParseError) as e:
        parse(text.replace(old, new, 1), source="m.ir")
    line, col = where
    assert str(e.value).startswith(f"m.ir:{line}:{col}: ")
    assert expect in str(e.value)
    assert "^" in str(e.value)  # a caret under the offending column


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("= relu(%1)", "= relu(%9)", "line 9:3: %2 = relu: %9 is used before it is defined"),
        (
            ": f32[?,4,3,3]\n  %3",
            ": f32[?,4,3,4]\n  %3",
            "declared type f32[?,4,3,4], but the op infers f32[?,4,3,3]",
        ),
        ("@w0)", "@nope)", "constant @nope is not declared"),
        ("= relu(%1)", "= relu(@w0)", "operand @w0 must be a value %name"),
        ("%1 = avgpool", "%0 = avgpool", "value %0 defined twice"),
        ("return %7", "return %99", "returns %99, which is not defined"),
        ("dense(%4, @w1)", "dense(%4)", "expects 2 operands, got 1"),
    ],
)
def test_verifier_errors(old: str, new: str, expect: str) -> None:
    text = print_graph(small_graph())
    assert old in text
    g = parse(text.replace(old, new, 1))
    with pytest.raises(VerifyError) as e:
        verify(g, check_data=False)
    assert expect in str(e.value)


def test_verifier_checks_constant_data_and_hash() -> None:
    g = small_graph()
    c = g.constants["w0"]
    assert c.data is not None
    c.data = c.data.copy()
    c.data[0, 0, 0, 0] += 1.0
    with pytest.raises(VerifyError, match=r"@w0: content hash #[0-9a-f]{16} does not match"):
        verify(g)
    g.constants["w0"] = Constant("w0", c.type, c.digest, np.zeros((4, 2, 3), np.float32))
    with pytest.raises(
        VerifyError, match=r"@w0: data is float32\[4, 2, 3\], declared f32\[4,2,3,3\]"
    ):
        verify(g)


def test_verifier_hashes_each_constant_once_per_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``checked``, an unchanged constant is hashed once over many calls; a constant given
    new data (or a new constant) is hashed again, and a mismatch is still caught."""
    import bsnnc.ir.verifier as verifier

    hashed: list[str] = []
    real = verifier.digest_array
    monkeypatch.setattr(
        verifier, "digest_array", lambda kind, data: hashed.append(kind.value) or real(kind, data)
    )
    g = small_graph()
    checked: dict[int, tuple[Constant, np.ndarray]] = {}
    for _ in range(3):
        verify(g, checked=checked)
    assert len(hashed) == len(g.constants)
    c = g.constants["w0"]
    assert c.data is not None
    good, c.data = c.data, c.data.copy()  # the same constant, new data: hashed again, wrong
    c.data[0, 0, 0, 0] += 1.0
    with pytest.raises(VerifyError, match=r"@w0: content hash #[0-9a-f]{16} does not match"):
        verify(g, checked=checked)
    assert len(hashed) == len(g.constants) + 1
    c.data = good
    verify(g, checked=checked)
    w1 = g.constants["w1"]
    w1.digest = "0" * 16  # the same data under another digest: hashed again
    with pytest.raises(VerifyError, match=r"@w1: content hash #[0-9a-f]{16} does not match"):
        verify(g, checked=checked)


def test_verifier_rejects_bad_shapes_and_kinds() -> None:
    b = GraphBuilder("bad")
    x = b.input("x", TensorType(Kind.F32, (None, 3, 4, 4)))
    w = b.const("w", Kind.F32, np.zeros((2, 4, 3, 3)))
    with pytest.raises(VerifyError, match="input has 3 channels but weight expects 4"):
        b.add("conv2d", [x, w])
    with pytest.raises(VerifyError, match="larger than padded input"):
        b.add("avgpool", [x], {"kernel": (5, 5), "stride": (1, 1)})
    y = b.add("if", [x], {"theta": 1.0})
    with pytest.raises(VerifyError, match="if input current must be one of f32, i32"):
        b.add("if", [y])
    with pytest.raises(VerifyError, match="if threshold must be > 0"):
        b.add("if", [x], {"theta": 0.0})


def test_window_arithmetic_matches_onnx_rules() -> None:
    assert window_out(8, 2, 2, 1, 0, 0, False) == 4
    assert window_out(9, 2, 2, 1, 0, 0, False) == 4
    assert window_out(9, 2, 2, 1, 0, 0, True) == 5
    # ceil mode never starts a window in the end padding: 5 + pad 1 → windows at 0, 2, 4 only
    assert window_out(5, 3, 2, 1, 1, 1, True) == 3
    assert window_out(7, 3, 1, 2, 2, 2, False) == 7


def test_networkx_view_and_dce_canonicalize() -> None:
    g = small_graph()
    dg = to_nx(g)
    assert dg.number_of_nodes() == len(g.nodes)
    assert is_acyclic(g)
    assert list(dg.successors("x")) == ["0"]
    # add a dead branch and an unused constant; dce removes both, canonicalize renumbers
    b = GraphBuilder("dead")
    x = b.input("x", TensorType(Kind.F32, (None, 4)))
    b.const("unused", Kind.F32, np.ones(3))
    dead = b.add("relu", [x])
    b.add("scale", [dead], {"factor": 2.0})
    live = b.add("bias", [x], {"value": 1.0})
    g2 = canonicalize(dce(b.finish([live])).graph).graph
    verify(g2)
    assert [n.op for n in g2.nodes] == ["input", "bias"]
    assert g2.constants == {}
    assert g2.outputs == ["0"]


# ----------------------------------------------------------------------------------------
# Property test: random well-typed graphs print, parse and print identically.

floats = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """A chain of random ops that type-checks, over a random input shape."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = GraphBuilder(draw(st.sampled_from(["g", "model", "net_1"])))
    shape = (None, draw(st.integers(1, 4)), draw(st.integers(4, 10)), draw(st.integers(4, 10)))
    cur = b.input(draw(st.sampled_from(["x", "input", "in.0"])), TensorType(Kind.F32, shape))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(
            st.sampled_from(
                [
                    "conv2d",
                    "avgpool",
                    "maxpool",
                    "relu",
                    "scale",
                    "bias",
                    "if",
                    "flatten",
                    "dense",
                    "readout",
                    "global_avgpool",
                ]
            )
        )
        t = b.type_of(cur)
        try:
            cur = _random_op(draw, b, rng, op, cur, t)
        except VerifyError:
            continue
    assume(len(b.graph.nodes) > 1)
    return b.finish([cur])


def _random_op(
    draw: st.DrawFn, b: GraphBuilder, rng: np.random.Generator, op: str, cur: str, t: TensorType
) -> str:
    if op in ("conv2d", "dense"):
        kind = draw(st.sampled_from([Kind.F32, Kind.BIPOLAR]))
        if op == "conv2d":
            if t.rank != 4:
                raise VerifyError("skip")
            k = draw(st.integers(1, 3))
            wshape: tuple[int, ...] = (draw(st.integers(1, 4)), int(t.shape[1] or 1), k, k)
            attrs = {
                "stride": (draw(st.integers(1, 2)),) * 2,
                "pad": tuple(draw(st.lists(st.integers(0, 1), min_size=4, max_size=4))),
                "dilation": (draw(st.integers(1, 2)),) * 2,
            }
        else:
            if t.rank != 2:
                raise VerifyError("skip")
            wshape, attrs = (draw(st.integers(1, 6)), int(t.shape[1] or 1)), {}
        data = (
            rng.normal(size=wshape)
            if kind == Kind.F32
            else np.where(rng.normal(size=wshape) > 0, 1, -1)
        )
        return b.add(op, [cur, b.const("w", kind, data)], attrs)
    if op in ("avgpool", "maxpool"):
        k = draw(st.integers(1, 3))
        attrs2 = {
            "kernel": (k, k),
            "stride": (draw(st.integers(1, 2)),) * 2,
            "ceil_mode": draw(st.booleans()),
            "pad": (0, 0, k // 2, k // 2),
        }
        if op == "avgpool":
            attrs2["count_include_pad"] = draw(st.booleans())
        return b.add(op, [cur], attrs2)
    if op in ("scale", "bias", "if"):
        key = {"scale": "factor", "bias": "value", "if": "theta"}[op]
        extra = {"reset": draw(st.sampled_from(["subtract", "zero"]))} if op == "if" else {}
        if draw(st.booleans()) and t.rank >= 2:
            c = b.const("p", Kind.F32, rng.uniform(0.1, 2, int(t.shape[1] or 1)))
            return b.add(op, [cur, c], {"axis": 1, **extra})
        return b.add(op, [cur], {key: draw(floats), **extra})
    return b.add(op, [cur], {})


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(graphs(), st.integers(0, 80))
def test_property_print_parse_print(g: Graph, inline_max: int) -> None:
    verify(g)
    text = print_graph(g)
    g2 = parse(text)
    g2.attach_weights(g.weights())
    verify(g2)
    assert print_graph(g2) == text
    once = print_graph(canonicalize(g2).graph)
    assert print_graph(canonicalize(parse(once)).graph) == once  # canonical form is a fixed point
    # small constants inline: the data comes back exactly (same hashes), both forms round-trip
    inline = print_graph(g, inline_max=inline_max)
    g3 = parse(inline)
    for c in g3.constants.values():
        small = math.prod(int(d or 0) for d in c.type.shape) <= inline_max
        assert (c.data is not None) == (c.type.is_static() and small)
    verify(g3)
    assert print_graph(g3, inline_max=inline_max) == inline
    assert print_graph(g3) == text


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_format_round_trips(x: float) -> None:
    text = format_float(x)
    back = float(text)
    assert (math.isnan(x) and math.isnan(back)) or back == x
    assert any(ch in text for ch in ".ein")  # never looks like an int


# ----------------------------------------------------------------------------------------
# Inline constants.

INLINE = """graph @t {
  const @w : %s = %s
  %%x = input() : f32[?,3]
  %%0 = dense(%%x, @w) : f32[?,2]
  return %%0
}
"""


@pytest.mark.parametrize(
    ("ty", "literal", "expect"),
    [
        ("bipolar[2,3]", "[[1,-1,1],[-1,1,1]]", [[1, -1, 1], [-1, 1, 1]]),
        ("bipolar[2,3]", "[1,-1,1,-1,1,1]", [[1, -1, 1], [-1, 1, 1]]),  # flat, row-major
        ("f32[2,3]", "[[0.5,-2,1e-3],[-0.0,inf,-inf]]", [[0.5, -2, 1e-3], [-0.0, np.inf, -np.inf]]),
        ("i32[2,3]", "[[-2147483648,0,7],[1,2,2147483647]]", [[-(2**31), 0, 7], [1, 2, 2**31 - 1]]),
    ],
)
def test_inline_constant_data(ty: str, literal: str, expect: list[list[float]]) -> None:
    g = parse(INLINE % (ty, literal))
    c = g.constants["w"]
    assert str(c.type) == ty
    assert c.data is not None and c.data.dtype == STORAGE_DTYPE[c.type.kind]
    np.testing.assert_array_equal(c.data, np.array(expect, dtype=c.data.dtype))
    assert c.digest == digest_array(c.type.kind, c.data)
    if c.type.kind != Kind.I32:  # (dense takes no i32 weights)
        verify(g)


def test_inline_nan_and_printer_round_trip() -> None:
    g = parse(INLINE % ("f32[2,3]", "[1,2,3,4,5,nan]"))
    text = print_graph(g, inline_max=6)
    assert "  const @w : f32[2,3] = [[1.0,2.0,3.0],[4.0,5.0,nan]]\n" in text
    assert print_graph(parse(text), inline_max=6) == text
    assert print_graph(g, inline_max=5) == print_graph(g)  # too big: the hash form
    assert f"@w : f32[2,3] #{g.constants['w'].digest}\n" in print_graph(g)


def test_inline_f32_prints_shortest_float32_text() -> None:
    data = np.array([0.1, 1e-45, 3.4028235e38, -2.5, 1 / 3], np.float32)
    g = GraphBuilder("f")
    x = g.input("x", TensorType(Kind.F32, (None, 5)))
    s = g.const("s", Kind.F32, data)
    graph = g.finish([g.add("scale", [x, s], {"axis": 1})])
    text = print_graph(graph, inline_max=5)
    assert "= [0.1,1e-45,3.4028235e+38,-2.5,0.33333334]\n" in text
    back = parse(text).constants["s"].array()
    assert back.tobytes() == data.tobytes()


def test_inline_max_is_bounded() -> None:
    g = small_graph()
    with pytest.raises(ValueError, match="inline_max must be between 0 and 65536"):
        print_graph(g, inline_max=MAX_INLINE_ELEMENTS + 1)
    assert "= [" not in print_graph(g)


@pytest.mark.parametrize(
    ("ty", "literal", "at", "expect"),
    [
        ("bipolar[2,3]", "[1,-1,1,-1,1]", 0, "bipolar[2,3] has 6 elements, the literal has 5"),
        ("bipolar[2,3]", "[[1,-1,1],[-1,1]]", 10, "this list has 2 elements, dimension 1 of"),
        ("bipolar[2,3]", "[[1,-1,1],[-1,1,1],[1,1,1]]", 0, "this list has 3 elements"),
        ("bipolar[2,3]", "[[1,1,1],1,1,1]", 9, "expected a list here"),
        ("bipolar[2,3]", "[[1,-1,0],[-1,1,1]]", 7, "bipolar value 0 must be 1 or -1"),
        ("bipolar[2,3]", "[[1,-1,1.0],[-1,1,1]]", 7, "bipolar values must be 1 or -1, got 1.0"),
        ("bipolar[2,3]", "[[1,-1,nan],[-1,1,1]]", 7, "must be 1 or -1, got nan"),
        ("i32[2,3]", "[[1,2,inf],[1,2,3]]", 6, "i32 values must be an integer, got inf"),
        ("i32[2,3]", "[[1,2,3],[1,2,2147483648]]", 14, "i32 value 2147483648 out of the i32 range"),
        ("spike[2,3]", "[[1,2,0],[1,1,0]]", 4, "spike value 2 must be 0 or 1"),
        ("i32[2,3]", f"[[1,2,3],[1,2,{'9' * 5000}]]", 14, "i32 value 99999999999999999999999…"),
        ("f32[2,3]", "[[1,2,3],[1,2,1e39]]", 14, "1e39 does not fit in f32"),
        ("f32[?,3]", "[1,2,3]", 0, "an inline constant needs a static shape"),
        ("f32[300,300]", "[1]", 0, "90000 elements, too many to write inline (at most 65536)"),
    ],
)
def test_inline_constant_errors(ty: str, literal: str, at: int, expect: str) -> None:
    """``at``: the index in ``literal`` that the error points at."""
    col = len(f"  const @w : {ty} = ") + at + 1
    with pytest.raises(IRParseError) as e:
        parse(INLINE % (ty, literal), source="t.ir")
    msg = str(e.value)
    assert msg.startswith(f"t.ir:2:{col}: constant @w: ")
    assert expect in msg
    src, caret = msg.splitlines()[1:]
    assert src == f"    const @w : {ty} = {literal}"
    assert caret == " " * (col + 1) + "^"


def test_diagnostic_caret_follows_tabs_and_clamps() -> None:
    text = "a\n\tb\tc\n"
    assert format_diagnostic("f", text, 2, 4, "m") == "f:2:4: m\n  \tb\tc\n  \t \t^"
    assert format_diagnostic("f", text, 9, 3, "m") == "f:9:3: m\n  \n    ^"


@pytest.mark.parametrize(
    ("value", "where"),
    [(0, [0, 0]), (2, [4, 35]), (-128, [2, 17]), (-2, [1, 3])],
)
def test_attach_weights_refuses_a_bipolar_value_other_than_plus_minus_one(
    value: int, where: list[int]
) -> None:
    g = parse(print_graph(small_graph()))
    weights = small_graph().weights()
    w1 = weights["w1"].copy()
    w1[tuple(where)] = value
    with pytest.raises(VerifyError, match=rf"@w1: a value other than 1 and -1, {value} at index "):
        g.attach_weights({**weights, "w1": w1})
    with pytest.raises(VerifyError) as e:
        g.attach_weights({**weights, "w1": w1})
    assert str(e.value).endswith(f"at index {where}")


def test_attach_weights_accepts_a_bipolar_layer_of_plus_minus_one() -> None:
    g = parse(print_graph(small_graph()))
    weights = small_graph().weights()
    g.attach_weights(weights)
    assert g.constants["w1"].data is not None
    assert set(np.unique(g.constants["w1"].data).tolist()) == {-1, 1}
    verify(g)


def test_if_init_prints_parses_and_zero_is_absent() -> None:
    """``init`` (the IF membranes' start, a fraction of θ) prints only when it is not 0, parses
    back, and 0 given explicitly means the same graph as no attribute."""
    text = print_graph(small_graph())
    assert "init" not in text
    plain = '{axis=1, reset="zero", theta=0.25}'
    half = text.replace(plain, '{axis=1, init=0.5, reset="zero", theta=0.25}')
    assert half != text
    assert print_graph(parse(half)) == half
    zero = text.replace(plain, '{axis=1, init=0.0, reset="zero", theta=0.25}')
    assert print_graph(parse(zero)) == text


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("0.3", "if init must be a multiple of 1/256 in [0, 1] (a fraction of θ), got 0.3"),
        ("1.5", "got 1.5"),
        ("-0.5", "got -0.5"),
        ("nan", "got nan"),
    ],
)
def test_if_init_off_its_grid_is_refused_with_its_line(value: str, expect: str) -> None:
    text = print_graph(small_graph()).replace("{axis=1, reset", f"{{axis=1, init={value}, reset")
    with pytest.raises((IRParseError, VerifyError)) as e:
        verify(parse(text, source="m.ir"), check_data=False)
    assert expect in str(e.value)
    assert "10:" in str(e.value) or "line 10" in str(e.value)
