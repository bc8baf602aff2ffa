"""bsnnc.ir: types, the op table, graphs, the text form (printer + lark parser), the verifier."""

from bsnnc.ir.builder import GraphBuilder
from bsnnc.ir.errors import BsnncError, IRParseError, VerifyError
from bsnnc.ir.graph import Constant, Graph, Node
from bsnnc.ir.ops import OPS
from bsnnc.ir.parser import parse
from bsnnc.ir.printer import print_graph
from bsnnc.ir.types import Kind, TensorType
from bsnnc.ir.verifier import verify

__all__ = [
    "OPS",
    "BsnncError",
    "Constant",
    "Graph",
    "GraphBuilder",
    "IRParseError",
    "Kind",
    "Node",
    "TensorType",
    "VerifyError",
    "parse",
    "print_graph",
    "verify",
]
