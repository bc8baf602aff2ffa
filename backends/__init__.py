"""bsnnc.backends."""
