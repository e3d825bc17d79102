"""Speech-LLM model pieces: Whisper front end and encoder, ChatGLM3 as GlmForCausalLM, connectors, decoding."""
