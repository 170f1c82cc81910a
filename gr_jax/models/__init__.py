"""Recommendation models. ``registry.build(config, artifacts)`` returns one by ``config.model.name``."""
