"""ESPnet2 extension: speech-LLM ASR and NER for Chinese (Whisper + ChatGLM3)."""
