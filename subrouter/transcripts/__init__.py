"""
Transcripts: recording proxied traffic as JSONL, browsing it, mirroring it.
"""
