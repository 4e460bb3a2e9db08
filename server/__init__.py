"""gRPC adapter of postclf: validation → domain calls → responses, plus process wiring."""
