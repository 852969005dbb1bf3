"""LLM-written training data (``tunelens data generate``): seeds, templates, generators, filters."""
