"""The container model: what a container is and how it changes state.

Layering: ``files`` -> ``model`` -> ``kernel.api`` (Protocols).  Within the model,
imports go one way: container <- apply <- settings <- {resources, network} and
container <- lifecycle <- checkpoint <- state <- host.
"""
