"""Corpus preparation: AISHELL-1 + AISHELL-NER into Kaldi data directories, and their validation."""
