"""cortex: one OpenAI + Anthropic compatible API over a fleet of local LLM hosts."""

__version__ = "0.1.0"
