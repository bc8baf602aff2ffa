"""``bsnnc inspect``: layers, shapes, binary or not, α and op counts of a model or artifact."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bsnnc.backends.rram.cost import load_mapping
from bsnnc.backends.rram.program import Program
from bsnnc.backends.rram.validate import check_artifact
from bsnnc.compiler.console import (
    MAX_DIM,
    emit_json,
    err,
    layers_table,
    mapping_table,
    resolve_model,
    shape_arg,
)
from bsnnc.compiler.report import layer_table
from bsnnc.ir.graph import Graph
from bsnnc.ir.io import load_ir
from bsnnc.runtime.artifact import read_artifact


def add_parser(sub: Any) -> None:
    """Register the command."""
    p = sub.add_parser(
        "inspect",
        help="summarise a model, IR file or artifact",
        description="Show every weighted layer: shapes, whether its weights are binary, α and "
        "operations per image (conv: nIP·kH·kW·nOP·oH·oW, linear: iS·oS).",
    )
    p.add_argument("file", help="an .onnx model, an .ir file, a .tiles artifact, or 'digits'")
    p.add_argument(
        "--input-shape",
        type=shape_arg,
        help="per-sample input shape C,H,W for ONNX models with dynamic dimensions "
        f"(each 1..{MAX_DIM:,})",
    )
    p.add_argument("--json", action="store_true", help="print JSON to stdout")
    p.set_defaults(func=run)


def load_any(spec: str, input_shape: tuple[int, ...] | None = None) -> tuple[Graph, dict[str, Any]]:
    """A graph from an ONNX model, IR file or artifact, plus facts about the container."""
    path = resolve_model(spec)
    if path.suffix == ".ir":
        return load_ir(path, need_weights=False), {"kind": "ir"}
    if path.suffix == ".tiles" or _is_zip(path):
        a = read_artifact(path)
        facts: dict[str, Any] = {"kind": "artifact", **a.meta}
        mapping = load_mapping(a.extra, str(path))
        if mapping is not None:
            facts["mapping"] = mapping.summary()
        if "program.txt" in a.extra:
            program = check_artifact(a, str(path))
            assert program is not None
            facts["program"] = program_summary(program)
        return a.graph, facts
    from bsnnc.compiler.frontend.importer import import_onnx  # onnx loads only when needed

    return import_onnx(path, input_shape), {"kind": "onnx"}


def program_summary(p: Program) -> dict[str, Any]:
    """Instruction counts of a tile program."""
    ops: dict[str, int] = {}
    for s in p.body:
        ops[s.op] = ops.get(s.op, 0) + 1
    arrays = sum(1 for s in p.decls if s.op == "array")
    return {
        "hw": p.hw,
        "arrays": arrays,
        "instructions_per_timestep": len(p.body),
        "by_opcode": ops,
    }


def _is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def run(args: argparse.Namespace) -> int:
    """Run ``inspect``; returns the exit code."""
    g, facts = load_any(args.file, args.input_shape)
    rows = layer_table(g)
    if args.json:
        inputs = [{"name": n.result, "type": str(n.type)} for n in g.inputs()]
        outputs = [{"name": o, "type": str(g.value_type("%" + o))} for o in g.outputs]
        emit_json(
            {
                "graph": g.name,
                **facts,
                "inputs": inputs,
                "outputs": outputs,
                "layers": [r.as_dict() for r in rows],
            }
        )
        return 0
    sig = ", ".join(f"%{n.result}: {n.type}" for n in g.inputs())
    err.print(
        f"[bold]@{g.name}[/] ({facts['kind']}): {sig} → {len(g.nodes)} nodes, "
        f"{len(g.constants)} constants"
    )
    err.print(layers_table(rows, "weighted layers"))
    if "mapping" in facts:
        err.print(mapping_table(facts["mapping"]))
    if "program" in facts:
        prog = facts["program"]
        ops = ", ".join(f"{k} {v}" for k, v in sorted(prog["by_opcode"].items()))
        err.print(
            f"tile program on {prog['hw']}: {prog['arrays']} arrays, "
            f"{prog['instructions_per_timestep']} instructions per timestep ({ops})"
        )
    return 0
