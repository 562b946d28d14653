"""The application around the library: the training loop with its checkpoints, data-parallel
runs over MPI, one run of a demo, and the command line."""
