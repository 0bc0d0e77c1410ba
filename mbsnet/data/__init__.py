"""Corpus preparation (synthetic eSpeak NG corpus, VoiceBank-DEMAND import) and loading."""
