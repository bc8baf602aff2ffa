"""bsnnc.compiler."""
