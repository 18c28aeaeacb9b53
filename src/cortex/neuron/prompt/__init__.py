"""Prompt shaping: chat templates, tool-call formats and parsing, output grammars."""
