"""bsnnc.runtime."""
