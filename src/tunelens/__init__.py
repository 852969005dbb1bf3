"""tunelens: fine-tune LLMs several ways, then see what each way changed."""

__version__ = "0.1.0"
