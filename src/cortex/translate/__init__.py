"""Pure converters between the Anthropic Messages and OpenAI Chat Completions dialects.

No I/O: requests (``requests.py``), whole responses (``responses.py``), stream
events (``streams.py``), and the id mapping between them (``ids.py``).
"""
