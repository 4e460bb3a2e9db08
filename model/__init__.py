"""The learning core: trident network, its loss, training phases, prediction and the registry.

No gRPC and no storage of posts here: numpy arrays in, numpy arrays out.
"""
