"""gateway: one OpenAI + Anthropic API over a fleet of neurons."""
