"""Recommendation models. ``registry.build(config, dataset)`` returns one by ``config.model.name``."""
