"""The ``unlearn`` training stage: arguments, method registry, data pairing, trainer and workflow."""
