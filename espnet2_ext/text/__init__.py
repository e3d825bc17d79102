"""Text handling: AISHELL-NER markup, normalisation, Kaldi ``text`` files, the ChatGLM3 tokenizer."""
