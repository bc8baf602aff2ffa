"""bsnnc.backends.numpy."""
