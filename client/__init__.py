"""The command-line client and the encoders other services (and our benches) use to build requests."""
