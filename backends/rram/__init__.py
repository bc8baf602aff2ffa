"""bsnnc.backends.rram: the RRAM crossbar backend (hardware model, partitioning, placement)."""
