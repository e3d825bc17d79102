"""Batch samplers of the speech-LLM task (registered as ESPnet batch types by the task)."""
