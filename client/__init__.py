"""The command-line client and the request encoders other services and our benches use."""
