"""neuron: the per-host daemon that loads models and runs inference in-process."""
