"""bsnnc.compiler.frontend."""
